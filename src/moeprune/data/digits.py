"""Real handwritten digits as an ImageFolder tree, and a reader for any ImageFolder tree (its images, and
the model label of each class folder).

scikit-learn ships the UCI handwritten digits (1,797 8x8 grayscale images, 10 classes) inside the package,
so this works offline. `export_digits_imagefolder` upsamples them to 32x32 grayscale PNGs (bilinear,
intensities 0..16 scaled to 0..255) and lays them out as ImageNet's validation set usually is:

    out/train/<class>/<n>.png
    out/val/<class>/<n>.png

`<class>` is the digit ("0".."9") and `<n>` the image's index in `sklearn.datasets.load_digits()`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from moeprune.errors import MoepruneError
from moeprune.outputs import atomic_dir

DIGITS_IMAGE_SIZE = 32
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def digit_to_image(pixels: np.ndarray, size: int = DIGITS_IMAGE_SIZE) -> Image.Image:
    """Turn one sklearn digit (8x8 floats in 0..16) into a `size` x `size` grayscale PIL image."""
    gray = np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BILINEAR)


def split_stratified(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/val split: every class keeps the same share in both parts.

    Args:
        labels: Class of every sample, shape `[N]`.
        val_fraction: Share of each class that goes to validation, in (0, 1).
        seed: Seed of the shuffle.

    Returns:
        `(train_idx, val_idx)`, each sorted ascending.
    """
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train_idx, val_idx = train_test_split(indices, test_size=val_fraction, random_state=seed, stratify=labels)
    return np.sort(train_idx), np.sort(val_idx)


def export_digits_imagefolder(out: Path, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write sklearn's handwritten digits as 32x32 grayscale PNGs in an ImageFolder tree.

    Args:
        out: Directory to create (replaced atomically if it exists): `out/train/<digit>/<n>.png`,
            `out/val/<digit>/<n>.png` and `out/digits.json` (the summary returned here).
        val_fraction: Share of every class held out for validation.
        seed: Seed of the stratified split.

    Returns:
        A summary: image size, mode, seed, val_fraction, classes and per-split, per-class counts.
    """
    if not 0.0 < val_fraction < 1.0:
        raise MoepruneError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target
    splits = dict(zip(("train", "val"), split_stratified(labels, val_fraction, seed), strict=True))
    classes = [str(c) for c in sorted(set(labels.tolist()))]
    summary = {
        "source": "sklearn.datasets.load_digits",
        "image_size": DIGITS_IMAGE_SIZE,
        "mode": "L",
        "seed": seed,
        "val_fraction": val_fraction,
        "classes": classes,
        "counts": {},
    }
    with atomic_dir(out) as tmp:
        for split, indices in splits.items():
            for cls in classes:
                (tmp / split / cls).mkdir(parents=True)
            for n in indices:
                digit_to_image(images[n]).save(tmp / split / str(labels[n]) / f"{n}.png")
            summary["counts"][split] = {cls: int((labels[indices] == int(cls)).sum()) for cls in classes}
        (tmp / "digits.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_imagefolder(directory: Path) -> tuple[list[Path], list[int], list[str]]:
    """List an ImageFolder tree `directory/<class>/<image>`.

    Args:
        directory: The root; each sub-directory is one class, holding image files (any common extension).

    Returns:
        `(paths, labels, classes)`: image paths in sorted order, the index of each image's class in `classes`,
        and the class folder names sorted by name.

    Raises:
        MoepruneError: The directory is missing, has no class folders, or holds no images.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MoepruneError(f"image folder {directory} does not exist; pass an ImageFolder tree DIR/<class>/<image>")
    classes = sorted(entry.name for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (directory / cls).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise MoepruneError(f"no images found in {directory}; expected an ImageFolder tree DIR/<class>/<image>.png|jpg")
    return paths, labels, classes


def read_image(path: Path, num_channels: int) -> Image.Image:
    """Open one image as grayscale (`num_channels` 1) or RGB (3), the mode a model's processor expects."""
    with Image.open(path) as image:
        return image.convert("L" if num_channels == 1 else "RGB")


def map_folders_to_labels(classes: list[str], label2id: dict[str, int], num_labels: int) -> list[int]:
    """Model label index of each class folder.

    Args:
        classes: Class folder names, sorted.
        label2id: The model's `config.label2id`.
        num_labels: Number of outputs of the classifier.

    Returns:
        `label_of[i]` = model label of folder `classes[i]`: through `label2id` when every folder name is a
        label, else `i` (sorted folder order).

    Raises:
        MoepruneError: More folders than the model has labels, when names do not match.
    """
    if label2id and all(name in label2id for name in classes):
        return [int(label2id[name]) for name in classes]
    if len(classes) > num_labels:
        raise MoepruneError(
            f"the image folder has {len(classes)} classes but the model predicts {num_labels} labels and the "
            "folder names are not its labels; name the folders after config.id2label"
        )
    return list(range(len(classes)))
