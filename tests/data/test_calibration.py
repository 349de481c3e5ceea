"""The calibrate stage: token windows and images, determinism, sidecar, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import save_tiny_lm, save_tiny_vision, write_gsm8k_jsonl

from moeprune.data.calibration import (
    calibration_batches,
    load_calibration,
    read_calibration_info,
    sidecar_path,
    tokenize_documents,
)
from moeprune.errors import MoepruneError
from moeprune.outputs import sha256_file
from moeprune.params import CalibrateSection, from_flags
from moeprune.stages import calibrate


def _calibrate(model: Path, source: str, samples: int, seq_len: int, out: Path, seed: int = 0) -> dict:
    """`moeprune calibrate` as the CLI runs it: the params model from the flags, then the stage."""
    params = from_flags(CalibrateSection, source=source, samples=samples, seq_len=seq_len, seed=seed)
    return calibrate.run(model, out, params)


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("lm") / "model")


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    return write_gsm8k_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl")


def test_gsm8k_windows_are_deterministic_and_the_sidecar_hashes_the_file(lm, problems, tmp_path):
    first = _calibrate(lm, f"gsm8k-local:{problems}", 6, 16, tmp_path / "a.safetensors", seed=3)
    second = _calibrate(lm, f"gsm8k-local:{problems}", 6, 16, tmp_path / "b.safetensors", seed=3)
    other = _calibrate(lm, f"gsm8k-local:{problems}", 6, 16, tmp_path / "c.safetensors", seed=4)
    ids = load_calibration(tmp_path / "a.safetensors")["input_ids"]
    assert ids.shape == (6, 16) and ids.dtype == torch.int64
    assert torch.equal(ids, load_calibration(tmp_path / "b.safetensors")["input_ids"])
    assert not torch.equal(ids, load_calibration(tmp_path / "c.safetensors")["input_ids"])
    assert first["sha256"] == second["sha256"] == sha256_file(tmp_path / "a.safetensors") != other["sha256"]
    info = read_calibration_info(tmp_path / "a.safetensors")
    assert info["sha256"] == sha256_file(tmp_path / "a.safetensors")
    assert info["source_sha256"] == sha256_file(problems)
    assert (info["samples"], info["seq_len"], info["seed"], info["tokens"]) == (6, 16, 3, 96)
    assert info["source"] == f"gsm8k-local:{problems}" and info["model"] == str(lm)


def test_windows_are_slices_of_the_gsm8k_prompt_stream(lm, problems, tmp_path):
    from transformers import AutoTokenizer

    _calibrate(lm, f"gsm8k-local:{problems}", 8, 12, tmp_path / "c.safetensors", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(lm)
    records = [json.loads(line) for line in problems.read_text().splitlines()]
    documents = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in records]
    stream = tokenize_documents(tokenizer, documents)
    assert stream.count(tokenizer.eos_token_id) == len(records)
    text = " " + " ".join(map(str, stream)) + " "
    for window in load_calibration(tmp_path / "c.safetensors")["input_ids"].tolist():
        assert " " + " ".join(map(str, window)) + " " in text


def test_text_sources_plain_and_jsonl(lm, tmp_path):
    plain = tmp_path / "corpus.txt"
    plain.write_text("Tom has 3 red apples. Anna has 4 blue books. " * 10)
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"Sam eats {i} coins."}) for i in range(10)) + "\n")
    info = _calibrate(lm, f"text:{plain}", 4, 20, tmp_path / "p.safetensors")
    assert info["source_tokens"] == 121  # 12 tokens per sentence pair x 10, plus one EOS
    _calibrate(lm, f"text:{jsonl}", 3, 8, tmp_path / "j.safetensors")
    batches = list(calibration_batches(tmp_path / "j.safetensors", 2))
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1]


def test_hf_source_reads_a_local_dataset_from_the_cache(lm, problems, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "local_ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text(problems.read_text())
    info = _calibrate(lm, f"hf:{folder}:train", 4, 16, tmp_path / "h.safetensors")
    local = _calibrate(lm, f"gsm8k-local:{problems}", 4, 16, tmp_path / "g.safetensors")
    assert info["source_tokens"] == local["source_tokens"]  # same documents, same GSM8K formatting
    from_hf = load_calibration(tmp_path / "h.safetensors")["input_ids"]
    assert torch.equal(from_hf, load_calibration(tmp_path / "g.safetensors")["input_ids"])


def _bad_inputs(tmp: Path, problems: Path) -> dict[str, tuple[str, int, int, str]]:
    empty = tmp / "empty.jsonl"
    empty.write_text("\n\n")
    no_answer = tmp / "no_answer.jsonl"
    no_answer.write_text(json.dumps({"question": "How many?"}) + "\n")
    no_text = tmp / "no_text.jsonl"
    no_text.write_text(json.dumps({"body": "Tom"}) + "\n")
    short = tmp / "short.txt"
    short.write_text("Tom has 3 apples.")
    return {  # name: (source, samples, seq_len, words the message must hold)
        "unknown prefix": ("csv:data.csv", 4, 16, "unknown calibration source 'csv:data.csv'"),
        "missing path": (f"gsm8k-local:{tmp / 'nope.jsonl'}", 4, 16, "does not exist"),
        "empty jsonl": (f"gsm8k-local:{empty}", 4, 16, "is empty"),
        "no answer": (f"gsm8k-local:{no_answer}", 4, 16, "'question' and 'answer'"),
        "no text": (f"text:{no_text}", 4, 16, "'text' field"),
        "zero samples": (f"gsm8k-local:{problems}", 0, 16, "--samples"),
        "beyond context": (f"gsm8k-local:{problems}", 4, 129, "context of 128 tokens"),
        "too short": (f"text:{short}", 4, 16, "only 6 tokens"),
        "images for an LM": (f"imagefolder:{tmp}", 4, 16, "language model"),
        "hf offline": ("hf:nonexistent-org/nonexistent-dataset", 4, 16, "not available offline"),
    }


def test_every_bad_input_raises_and_writes_nothing(lm, problems, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    out_dir = tmp_path / "out"
    for name, (source, samples, seq_len, message) in _bad_inputs(data, problems).items():
        with pytest.raises(MoepruneError) as error:
            _calibrate(lm, source, samples, seq_len, out_dir / "calib.safetensors")
        assert message in str(error.value), name
        assert "\n" not in str(error.value), name
        assert not out_dir.exists() or not any(out_dir.iterdir()), name


def test_missing_model_raises(problems, tmp_path):
    with pytest.raises(MoepruneError, match="does not exist"):
        _calibrate(tmp_path / "nomodel", f"gsm8k-local:{problems}", 4, 16, tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()


@pytest.fixture(scope="module")
def vision(tmp_path_factory) -> tuple[Path, Path]:
    return save_tiny_vision(tmp_path_factory.mktemp("vision"))


def test_imagefolder_images_are_processed_and_deterministic(vision, tmp_path):
    model, images = vision
    info = _calibrate(model, f"imagefolder:{images}", 5, 16, tmp_path / "a.safetensors", seed=1)
    _calibrate(model, f"imagefolder:{images}", 5, 16, tmp_path / "b.safetensors", seed=1)
    tensors = load_calibration(tmp_path / "a.safetensors")
    assert tensors["pixel_values"].shape == (5, 1, 8, 8) and tensors["pixel_values"].dtype == torch.float32
    assert tensors["labels"].dtype == torch.int64 and set(tensors["labels"].tolist()) <= {0, 1}
    assert -1.0 <= tensors["pixel_values"].min() and tensors["pixel_values"].max() <= 1.0
    assert sha256_file(tmp_path / "a.safetensors") == info["sha256"]
    assert sha256_file(tmp_path / "b.safetensors") == info["sha256"]
    assert (info["kind"], info["source_images"], info["seq_len"]) == ("images", 8, None)
    assert json.loads(sidecar_path(tmp_path / "a.safetensors").read_text()) == read_calibration_info(
        tmp_path / "a.safetensors"
    )


def test_bad_image_inputs_raise_and_write_nothing(vision, problems, tmp_path):
    model, images = vision
    empty = tmp_path / "empty_tree"
    (empty / "cat").mkdir(parents=True)
    cases = {
        f"imagefolder:{empty}": (4, "no images found"),
        f"imagefolder:{images}": (9, "only 8 images"),
        f"imagefolder:{tmp_path / 'missing'}": (4, "does not exist"),
        f"gsm8k-local:{problems}": (4, "image classifier"),
    }
    for source, (samples, message) in cases.items():
        with pytest.raises(MoepruneError, match=message):
            _calibrate(model, source, samples, 16, tmp_path / "out" / "c.safetensors")
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
