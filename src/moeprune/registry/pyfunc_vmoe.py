"""The pyfunc model of a registered image classifier (the V-MoE): images in, class and probabilities out.

Input: a column `image` of encoded images (PNG, JPEG...) as base64 strings, or bytes. Output, one row
per image: `label` (the class name), `class_id`, `probability` (of that class) and `probabilities`
(all classes, in `id2label` order). The checkpoint is the model's artifact `checkpoint`; `import
moeprune` registers the V-MoE with transformers' Auto classes.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import mlflow.pyfunc

BATCH = 64


def signature() -> Any:
    """Input schema: one string column `image` (base64)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "image")]))


def decode_image(value: Any, mode: str) -> Any:
    """A PIL image from base64 text or raw bytes, converted to the processor's mode (L or RGB)."""
    from PIL import Image

    data = value if isinstance(value, (bytes, bytearray)) else base64.b64decode(value)
    with Image.open(io.BytesIO(data)) as image:
        return image.convert(mode)


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """Load the checkpoint with AutoModelForImageClassification; classify batches of images."""

    def load_context(self, context: Any) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from moeprune.arch.loading import register_own_models

        register_own_models()
        path = context.artifacts["checkpoint"]
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.model = AutoModelForImageClassification.from_pretrained(path, use_safetensors=True).eval()
        self.mode = "L" if getattr(self.model.config, "num_channels", 3) == 1 else "RGB"

    def predict(self, context: Any, model_input: Any, params: dict | None = None) -> Any:
        import pandas as pd
        import torch

        values = list(model_input["image"]) if isinstance(model_input, pd.DataFrame) else list(model_input)
        rows = []
        for start in range(0, len(values), BATCH):
            images = [decode_image(v, self.mode) for v in values[start : start + BATCH]]
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.model.dtype)
            with torch.no_grad():
                probs = self.model(pixel_values=pixels).logits.float().softmax(-1)
            for row in probs:
                class_id = int(row.argmax())
                label = self.model.config.id2label.get(class_id, str(class_id))
                rows.append((label, class_id, float(row[class_id]), [round(float(p), 6) for p in row]))
        return pd.DataFrame(rows, columns=["label", "class_id", "probability", "probabilities"])
