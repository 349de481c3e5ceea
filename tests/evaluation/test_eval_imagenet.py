"""ImageNet-style top-1 / top-5 evaluation on tiny ImageFolder trees with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moeprune.data.digits import map_folders_to_labels
from moeprune.errors import MoepruneError
from moeprune.evaluation.imagenet import count_topk_hits, evaluate_imagenet
from moeprune.testbed.vision import make_image_processor
from moeprune.testing import tiny_vmoe_model

# Label order of the model; the bias makes every image's ranking dog > cat > emu > fox > gnu > yak > owl.
LABELS = ["cat", "dog", "emu", "fox", "gnu", "owl", "yak"]
BIAS = torch.tensor([6.0, 7.0, 5.0, 4.0, 3.0, 0.0, 2.0])


def write_model_with_fixed_ranking(out: Path) -> Path:
    """A tiny V-MoE whose logits are BIAS for every image: its classifier ignores the features."""
    id2label = dict(enumerate(LABELS))
    model = tiny_vmoe_model(
        num_hidden_layers=2, num_labels=len(LABELS), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(BIAS)
    model.save_pretrained(out, safe_serialization=True)
    make_image_processor(size=8).save_pretrained(out)
    return out


def write_imagefolder(root: Path, counts: dict[str, int], size: int = 12, mode: str = "RGB") -> Path:
    """Random images, `counts[name]` of them in `root/<name>/` (sizes and mode differ from the model's)."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_model_with_fixed_ranking(tmp_path_factory.mktemp("model"))


def test_top1_top5_follow_label2id(model_dir, tmp_path):
    # Sorted folder order (cat, dog, owl, yak) differs from the label order: only label2id gives these numbers.
    data = write_imagefolder(tmp_path / "val", {"dog": 3, "cat": 2, "owl": 4, "yak": 1})
    metrics = evaluate_imagenet(model_dir, data, batch_size=4)
    assert metrics == {"imagenet.top1": 3 / 10, "imagenet.top5": 5 / 10, "imagenet.n": 10}


def test_unmatched_folder_names_use_sorted_order(model_dir, tmp_path):
    # Folders a..c map to labels 0..2 (cat, dog, emu): top-1 hits the "b" images, top-5 all of them.
    data = write_imagefolder(tmp_path / "val", {"a": 2, "b": 3, "c": 1}, mode="L")
    metrics = evaluate_imagenet(model_dir, data)
    assert metrics == {"imagenet.top1": 0.5, "imagenet.top5": 1.0, "imagenet.n": 6}


def test_limit_takes_a_fixed_subset(model_dir, tmp_path):
    data = write_imagefolder(tmp_path / "val", {"dog": 5, "owl": 5})
    first = evaluate_imagenet(model_dir, data, limit=4, batch_size=3)
    assert first["imagenet.n"] == 4 and first == evaluate_imagenet(model_dir, data, limit=4)
    assert evaluate_imagenet(model_dir, data, limit=100)["imagenet.n"] == 10


def test_errors_name_the_problem(model_dir, tmp_path):
    with pytest.raises(MoepruneError, match="does not exist"):
        evaluate_imagenet(model_dir, tmp_path / "missing")
    empty = tmp_path / "empty"
    (empty / "dog").mkdir(parents=True)
    with pytest.raises(MoepruneError, match="no images"):
        evaluate_imagenet(model_dir, empty)
    data = write_imagefolder(tmp_path / "val", {"dog": 1})
    with pytest.raises(MoepruneError, match="does not exist"):
        evaluate_imagenet(tmp_path / "no-model", data)
    with pytest.raises(MoepruneError, match="classes"):
        map_folders_to_labels([f"x{i}" for i in range(8)], {name: i for i, name in enumerate(LABELS)}, 7)


def test_count_topk_hits():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    targets = torch.tensor([1, 2, 0])
    assert count_topk_hits(logits, targets, 1) == (1, 1)
    assert count_topk_hits(logits, targets, 2) == (1, 2)
    assert count_topk_hits(logits, targets, 3) == (1, 3)
