"""MLflow model flavors of a version: what `mlflow.<flavor>.load_model` and `mlflow models serve` read.

- A causal LM with a tokenizer is logged with MLflow's transformers flavor, task text-generation, from
  its local checkpoint path (MLflow's memory-efficient path: the directory is copied, never loaded).
- An image classifier with an image processor (the V-MoE) is a pyfunc model: base64 images in, class
  and probabilities out (`registry/pyfunc_vmoe.py`).
- Anything else (no tokenizer, no processor) stays a plain folder of files.

The checkpoint sits inside the MLflow model folder (`model/` for transformers, `artifacts/checkpoint/`
for pyfunc); `checkpoint_dir` finds it again, so `download_version` still hands back a directory stock
`from_pretrained` loads. `save_model` is used (into a temporary folder, then logged with the run's
client) rather than the fluent `log_model`, which would need a global active run and tracking URI.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator
from pathlib import Path

TRANSFORMERS, PYFUNC, FILES = "transformers", "pyfunc", "files"
FLAVOR_TAG = "mlflow_flavor"
TEXT_TASK = "text-generation"
CHECKPOINT_ARTIFACT = "checkpoint"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def model_flavor(model_dir: Path) -> str:
    """transformers (causal LM with a tokenizer), pyfunc (image classifier with a processor), else files."""
    config_path = Path(model_dir) / "config.json"
    architectures = json.loads(config_path.read_text()).get("architectures") or [] if config_path.is_file() else []
    if any(a.endswith("ForCausalLM") for a in architectures):
        if any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES):
            return TRANSFORMERS
    if any(a.endswith("ForImageClassification") for a in architectures):
        if (Path(model_dir) / "preprocessor_config.json").is_file():
            return PYFUNC
    return FILES


def model_card_text(model_dir: Path) -> str:
    """The model card (README.md) moeprune wrote beside the weights, or a one-line stand-in."""
    card = Path(model_dir) / "README.md"
    return card.read_text() if card.is_file() else f"# {Path(model_dir).name}\n\nRegistered by moeprune.\n"


def requirements() -> list[str]:
    """Pinned requirements of the logged model (given, so MLflow infers nothing by loading the model)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "torch", "transformers", "safetensors", "pillow")]


def text_signature() -> object:
    """Strings in, strings out; `max_new_tokens` (default 64) as an inference param.

    Other generation settings come from the checkpoint's generation_config.json.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    params = ParamSchema([ParamSpec("max_new_tokens", "long", 64)])
    return ModelSignature(Schema([ColSpec("string")]), Schema([ColSpec("string")]), params)


def save_flavor(model_dir: Path, dst: Path, flavor: str) -> None:
    """Write the MLflow model folder of `model_dir` at `dst` (which must not exist)."""
    if flavor == TRANSFORMERS:
        import mlflow.transformers
        from huggingface_hub import ModelCard

        with pipeline_classes_resolved():
            mlflow.transformers.save_model(
                transformers_model=str(model_dir),
                path=str(dst),
                task=TEXT_TASK,
                model_card=ModelCard(model_card_text(model_dir)),
                signature=text_signature(),
                pip_requirements=requirements(),
            )
    elif flavor == PYFUNC:
        import mlflow.pyfunc

        from moeprune.registry.pyfunc_vmoe import ImageClassifier, signature

        mlflow.pyfunc.save_model(
            path=str(dst),
            python_model=ImageClassifier(),
            artifacts={CHECKPOINT_ARTIFACT: str(model_dir)},
            signature=signature(),
            pip_requirements=requirements(),
        )
    else:
        raise ValueError(f"no MLflow model folder for flavor {flavor!r}")


@contextlib.contextmanager
def pipeline_classes_resolved() -> Iterator[None]:
    """Let MLflow's local-checkpoint path read transformers 5's task table.

    transformers 5 names a task's pipeline class as a dotted string (`"impl": "transformers.pipelines.
    text_generation.TextGenerationPipeline"`); MLflow 3.17's `build_flavor_config_from_local_checkpoint`
    reads `impl.__name__`. For the duration of the save, `check_task` hands back the class itself.
    """
    from transformers import pipelines

    original = pipelines.check_task

    def check_task(task: str) -> tuple:
        name, targeted, options = original(task)
        if isinstance(targeted.get("impl"), str):
            module, _, cls = targeted["impl"].rpartition(".")
            targeted = {**targeted, "impl": getattr(importlib.import_module(module), cls)}
        return name, targeted, options

    pipelines.check_task = check_task
    try:
        yield
    finally:
        pipelines.check_task = original


def checkpoint_dir(model_folder: Path) -> Path:
    """The Hugging Face directory inside a downloaded version (the folder itself for plain files)."""
    model_folder = Path(model_folder)
    if not (model_folder / "MLmodel").is_file():
        return model_folder
    for inner in (model_folder / "model", model_folder / "artifacts" / CHECKPOINT_ARTIFACT):
        if (inner / "config.json").is_file():
            return inner
    return model_folder
