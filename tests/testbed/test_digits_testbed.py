"""Digits ImageFolder export and the quick vision testbed build (pretrain -> fine-tune)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moeprune.arch.vmoe import VMoEForImageClassification
from moeprune.data.digits import load_imagefolder, split_stratified
from moeprune.errors import MoepruneError
from moeprune.evaluation.imagenet import evaluate_imagenet
from moeprune.testbed.vision import (
    Schedule,
    all_rotations,
    build_vision_testbed,
    lr_at,
    make_config,
    rotate_by,
    train,
)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("vision") / "testbed"
    return out, build_vision_testbed(out, seed=0, quick=True)


def test_export_layout_and_stratification(testbed):
    out, _ = testbed
    data = out / "data"
    train_paths, train_labels, classes = load_imagefolder(data / "train")
    val_paths, val_labels, val_classes = load_imagefolder(data / "val")
    assert classes == val_classes == [str(d) for d in range(10)]
    assert len(train_paths) + len(val_paths) == 1797
    assert len(val_paths) == pytest.approx(0.2 * 1797, abs=10)
    train_counts, val_counts = np.bincount(train_labels), np.bincount(val_labels)
    shares = val_counts / (train_counts + val_counts)
    assert np.all(np.abs(shares - 0.2) < 0.02)  # every class split 80/20
    names = {p.name for p in train_paths}
    assert names.isdisjoint(p.name for p in val_paths)  # <n>.png is the sklearn index: no image in both
    with Image.open(val_paths[0]) as image:
        assert image.size == (32, 32) and image.mode == "L"
    summary = json.loads((data / "digits.json").read_text())
    assert sum(summary["counts"]["val"].values()) == len(val_paths)


def test_stratified_split_is_seeded():
    labels = np.repeat(np.arange(5), 20)
    first, second = split_stratified(labels, 0.2, seed=1), split_stratified(labels, 0.2, seed=1)
    other = split_stratified(labels, 0.2, seed=2)
    assert np.array_equal(first[1], second[1]) and not np.array_equal(first[1], other[1])
    assert np.all(np.bincount(labels[first[1]]) == 4)


def test_load_imagefolder_errors(tmp_path):
    with pytest.raises(MoepruneError, match="does not exist"):
        load_imagefolder(tmp_path / "missing")
    with pytest.raises(MoepruneError, match="no images"):
        load_imagefolder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(MoepruneError, match="no images"):
        load_imagefolder(tmp_path)


def test_rotations_are_exact_quarter_turns():
    pixels = torch.arange(2 * 16, dtype=torch.float).view(2, 1, 4, 4)
    rotated, turns = all_rotations(pixels)
    assert rotated.shape == (8, 1, 4, 4) and turns.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(rotated[2], torch.rot90(pixels[0], 1, dims=(-2, -1)))
    assert torch.equal(rotate_by(pixels, torch.tensor([2, 0]))[0], torch.rot90(pixels[0], 2, dims=(-2, -1)))


def test_learning_rate_warms_up_then_decays():
    schedule = Schedule(epochs=1, lr=1e-3, warmup_fraction=0.1)
    rates = [lr_at(step, 100, schedule) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert max(rates) == pytest.approx(1e-3) and rates[-1] < 1e-5
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))


def test_training_is_deterministic():
    def run() -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(0)
        model = VMoEForImageClassification(make_config("quick", 10, {i: str(i) for i in range(10)}))
        pixels, labels = torch.randn(32, 1, 32, 32), torch.randint(0, 10, (32,))
        losses = train(
            model, pixels, labels, Schedule(epochs=1, lr=1e-3, batch_size=16), torch.Generator().manual_seed(0)
        )
        return losses, model.vmoe.layers[1].mlp.gate.weight.detach().clone()

    (losses_a, router_a), (losses_b, router_b) = run(), run()
    assert losses_a == losses_b and torch.equal(router_a, router_b)


def test_quick_testbed_writes_loadable_pretrained_and_finetuned(testbed):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    out, summary = testbed
    assert json.loads((out / "testbed.json").read_text()) == summary
    assert summary["data"] == {"train": 1437, "val": 360, "classes": [str(d) for d in range(10)], "image_mode": "L"}
    assert set(summary["timings"]) >= {"pretrain_s", "finetune_s", "total_s"}
    assert summary["machine"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert 0.0 <= summary["finetune"]["val_top1"] <= 1.0
    models = {}
    for name in ("pretrained", "finetuned"):
        assert (out / name / "model.safetensors").is_file()
        models[name] = AutoModelForImageClassification.from_pretrained(out / name, use_safetensors=True)
        processor = AutoImageProcessor.from_pretrained(out / name)
        assert processor(images=[Image.new("L", (32, 32))], return_tensors="pt")["pixel_values"].shape == (1, 1, 32, 32)
    assert models["pretrained"].config.num_labels == 4
    assert models["finetuned"].config.id2label == {i: str(i) for i in range(10)}
    for layer in summary["model"]["moe_layers"]:
        before = models["pretrained"].vmoe.layers[layer].mlp.gate.weight
        after = models["finetuned"].vmoe.layers[layer].mlp.gate.weight
        assert before.shape == after.shape == (8, summary["model"]["hidden_size"])
        assert not torch.equal(before, after)  # fine-tuning moved the routers
    for report in summary["routing"]["finetuned_on_val"].values():
        assert len(report["load"]) == 8 and sum(report["load"]) == pytest.approx(1.0, abs=1e-3)


def test_imagenet_evaluation_on_the_testbed(testbed):
    out, summary = testbed
    full = evaluate_imagenet(out / "finetuned", out / "data" / "val", batch_size=128)
    assert full["imagenet.n"] == 360
    assert full["imagenet.top1"] == pytest.approx(summary["finetune"]["val_top1"], abs=0.02)
    assert full["imagenet.top5"] >= full["imagenet.top1"]
    assert evaluate_imagenet(out / "finetuned", out / "data" / "val", limit=50)["imagenet.n"] == 50
