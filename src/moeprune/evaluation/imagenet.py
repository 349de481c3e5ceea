"""ImageNet-style top-1 / top-5 accuracy of an image classifier on an ImageFolder tree `DIR/<class>/<image>`.

This is the `imagenet:DIR` evaluation task. Class folders are matched to the model's labels through
`config.label2id` when every folder name is a label (ImageNet synset ids, or the digits "0".."9" of the
testbed); otherwise the sorted folder order is taken as the label index, as torchvision's ImageFolder does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from moeprune.data.digits import load_imagefolder, map_folders_to_labels, read_image
from moeprune.devices import resolve_device
from moeprune.errors import MoepruneError


def select_subset(num_images: int, limit: int | None, seed: int = 0) -> list[int]:
    """Indices of the images to evaluate: all, or `limit` of them drawn with a fixed seed (sorted)."""
    if limit is None or limit >= num_images:
        return list(range(num_images))
    if limit < 1:
        raise MoepruneError(f"limit must be a positive number of images, got {limit}")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(num_images, generator=generator)[:limit].tolist())


def count_topk_hits(logits: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[int, int]:
    """Number of rows whose target is the arg-max (top-1) and among the `k` highest logits (top-k)."""
    topk = logits.topk(k, dim=-1).indices  # [B, k]
    hits = topk == targets[:, None]
    return int(hits[:, 0].sum()), int(hits.any(dim=-1).sum())


def load_classifier(model_dir: Path, device: torch.device):
    """Load an image classifier and its image processor (safetensors only, no remote code)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from moeprune.arch.loading import check_model_dir, register_own_models

    register_own_models()
    path = check_model_dir(model_dir)
    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise MoepruneError(
            f"'{path}' has no usable image processor ({exc.__class__.__name__}); save one with "
            "image_processor.save_pretrained(model_dir)"
        ) from exc
    model = AutoModelForImageClassification.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
    return model.to(device).eval(), processor


@torch.no_grad()
def evaluate_imagenet(
    model_dir: str | Path,
    data_dir: str | Path,
    limit: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
) -> dict[str, float | int]:
    """Top-1 and top-5 accuracy of the classifier in `model_dir` on the ImageFolder tree `data_dir`.

    Args:
        model_dir: A Hugging Face image-classification directory with an image processor.
        data_dir: `data_dir/<class>/<image>`; folder names matched to `config.label2id` when they all are labels.
        limit: Evaluate only this many images (a fixed-seed random subset), or all when None.
        batch_size: Images per forward pass.
        device: "auto", "cpu", "cuda", ...

    Returns:
        `{"imagenet.top1": float, "imagenet.top5": float, "imagenet.n": int}`; top-5 uses
        `min(5, num_labels)` classes.

    Raises:
        MoepruneError: Missing model or data directory, no images, or classes that cannot be matched.
    """
    paths, folder_labels, classes = load_imagefolder(Path(data_dir))
    torch_device = resolve_device(device)
    model, processor = load_classifier(Path(model_dir), torch_device)
    config = model.config
    label_of = map_folders_to_labels(classes, dict(config.label2id or {}), config.num_labels)
    chosen = select_subset(len(paths), limit)
    k = min(5, config.num_labels)
    num_channels = getattr(config, "num_channels", 3)
    top1 = topk = 0
    for start in tqdm(range(0, len(chosen), batch_size), desc="imagenet eval", disable=None):
        batch = chosen[start : start + batch_size]
        images = [read_image(paths[i], num_channels) for i in batch]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(torch_device, model.dtype)
        targets = torch.tensor([label_of[folder_labels[i]] for i in batch], device=torch_device)
        hits1, hitsk = count_topk_hits(model(pixel_values=pixel_values).logits.float(), targets, k)
        top1, topk = top1 + hits1, topk + hitsk
    return {"imagenet.top1": top1 / len(chosen), "imagenet.top5": topk / len(chosen), "imagenet.n": len(chosen)}
