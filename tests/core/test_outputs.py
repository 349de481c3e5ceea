"""The --out contract on the good paths: reruns, --overwrite, --force, real sparsity, umask, scratch space."""

from __future__ import annotations

import json
import os
import stat
import tempfile

import pytest
from typer.testing import CliRunner

from moeprune.cli import app
from moeprune.testing import tiny_moe_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model"
    tiny_moe_model("mixtral").save_pretrained(path)
    return path


def _scores(path, keep, **extra):
    layers = {str(i): {"scores": [float(e) for e in range(8)], "keep": keep} for i in (0, 1)}
    path.write_text(json.dumps({"method": "frequency", "expert_sparsity": 0.5, "layers": layers, **extra}))
    return path


def _prune(model, scores, out, *extra):
    result = runner.invoke(
        app, ["prune-experts", "--model", str(model), "--scores", str(scores), "--out", str(out), *extra]
    )
    return result


def test_a_rerun_replaces_its_own_earlier_output(model, tmp_path):
    out = tmp_path / "out"
    assert _prune(model, _scores(tmp_path / "a.json", [0, 1, 2, 3]), out).exit_code == 0
    result = _prune(model, _scores(tmp_path / "b.json", [4, 5, 6, 7]), out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "moeprune.json").read_text())["params"]["keep"]["0"] == [4, 5, 6, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "out"]


def test_overwrite_replaces_what_moeprune_did_not_write(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _prune(model, _scores(tmp_path / "s.json", [0, 1, 2, 3]), out).exit_code == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert _prune(model, tmp_path / "s.json", out, "--overwrite").exit_code == 0
    assert not (out / "notes.txt").exists() and (out / "model.safetensors.index.json").is_file()


def test_force_applies_scores_of_other_weights_and_the_lineage_records_the_real_sparsity(model, tmp_path):
    scores = _scores(tmp_path / "s.json", list(range(8)), model_sha256="0" * 64)  # keep-all, another model
    assert _prune(model, scores, tmp_path / "out").exit_code == 1
    result = _prune(model, scores, tmp_path / "out", "--force")
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "out" / "moeprune.json").read_text())["params"]
    assert params["expert_sparsity"] == 0.0 and params["scores_expert_sparsity"] == 0.5


def test_outputs_follow_the_umask(model, tmp_path):
    previous = os.umask(0o022)
    try:
        assert _prune(model, _scores(tmp_path / "s.json", [0, 1, 2, 3]), tmp_path / "out").exit_code == 0
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "out", *(tmp_path / "out").iterdir()]}
    assert modes.pop("out") == 0o755 and set(modes.values()) == {0o644}, modes


def test_evaluation_temporaries_live_beside_the_output_and_go(model, tmp_path, monkeypatch):
    seen = []

    def fake_tasks(*args, **options):
        seen.append(tempfile.mkdtemp(prefix="moeprune-gsm8k-"))  # what lm-eval's task folder does
        return {"perplexity": 1.0}

    monkeypatch.setattr("moeprune.stages.evaluate.run_tasks", fake_tasks)
    data = tmp_path / "t.txt"
    data.write_text("hello")
    out = tmp_path / "metrics.json"
    args = ["evaluate", "--model", str(model), "--task", f"perplexity:{data}", "--out", str(out), "--device", "cpu"]
    assert runner.invoke(app, args).exit_code == 0
    assert seen[0].startswith(str(tmp_path / ".metrics.json.tmp-"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "t.txt"]


def test_every_stage_reruns_into_its_own_output_and_refuses_another_stages(tmp_path):
    from builders import evaluate_params, save_tiny_lm, unstructured_params, write_gsm8k_jsonl

    from moeprune.errors import MoepruneError
    from moeprune.params import CalibrateSection, ScoreSection
    from moeprune.stages import calibrate, evaluate, profile, prune_unstructured, score

    lm, problems = save_tiny_lm(tmp_path / "lm"), write_gsm8k_jsonl(tmp_path / "p.jsonl")
    calib, prof, scores = tmp_path / "c.safetensors", tmp_path / "prof", tmp_path / "s.json"
    pruned, metrics = tmp_path / "pruned", tmp_path / "m.json"
    frequency, perplexity = (
        ScoreSection(method="frequency", expert_sparsity=0.5),
        evaluate_params(f"perplexity:{problems}", 1),
    )
    for _ in range(2):  # the second round replaces each stage's own first output
        calibrate.run(lm, calib, CalibrateSection(source=f"gsm8k-local:{problems}", samples=4, seq_len=16))
        profile.run(lm, calib, prof, device="cpu")
        score.run(lm, scores, frequency, profile=prof, device="cpu")
        prune_unstructured.run(lm, pruned, unstructured_params("magnitude", sparsity=0.5), device="cpu")
        evaluate.run(lm, metrics, perplexity, device="cpu")
    with pytest.raises(MoepruneError, match="not an earlier `moeprune profile`"):
        profile.run(lm, calib, pruned, device="cpu")
    with pytest.raises(MoepruneError, match="not an earlier `moeprune score`"):
        score.run(lm, metrics, frequency, profile=prof, device="cpu")
    with pytest.raises(MoepruneError, match="not an earlier `moeprune evaluate`"):
        evaluate.run(lm, scores, perplexity, device="cpu")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
