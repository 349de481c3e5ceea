# ruff: noqa: E501  (the CASES table keeps one bad input per line)
"""Every bad input gets one `error:` line, a non-zero exit, nothing at --out and no temporary left.

`CASES` is the table README's "Reliability" section is generated from (`tests/reliability_table.py`).
Each case builds its bad input in a fresh folder from a shared workspace (a tiny Mixtral with a
tokenizer, word problems, a calibration file, a profile and a scores file, all made by the stages).
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moeprune.cli import app

runner = CliRunner()
PROGRESS = re.compile(r"\d+%\|")  # tqdm progress bars (loading weights) are not error output
Args = Callable[["Workspace", Path, pytest.MonkeyPatch], list[str]]


@dataclass(frozen=True)
class Case:
    """One bad input: its fault class (a README row), the command line, a phrase the error must hold."""

    id: str
    fault: str
    args: Args
    expect: str


@dataclass(frozen=True)
class Workspace:
    model: Path
    other: Path  # another tiny Mixtral (other weights)
    problems: Path
    calib: Path
    profile: Path
    scores: Path


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    from builders import save_tiny_lm, write_gsm8k_jsonl

    from moeprune.params import CalibrateSection, ScoreSection
    from moeprune.stages import calibrate, profile, score

    root = tmp_path_factory.mktemp("ws")
    model, other = save_tiny_lm(root / "model"), save_tiny_lm(root / "other", seed=1)
    problems = write_gsm8k_jsonl(root / "train.jsonl")
    calib = root / "calib.safetensors"
    calibrate.run(model, calib, CalibrateSection(source=f"gsm8k-local:{problems}", samples=4, seq_len=16))
    profile.run(model, calib, root / "profile", device="cpu")
    scores = ScoreSection(method="frequency", expert_sparsity=0.5)
    score.run(model, root / "scores.json", scores, profile=root / "profile", device="cpu")
    return Workspace(model, other, problems, calib, root / "profile", root / "scores.json")


# ---- builders of bad inputs (each writes into the case folder `d`) -------------------------------------


def model_copy(ws: Workspace, d: Path, edit: Callable[[Path], object] = lambda _: None) -> Path:
    copy = Path(shutil.copytree(ws.model, d / "model"))
    edit(copy)
    return copy


def sharded(ws: Workspace, d: Path, edit: Callable[[Path], object]) -> Path:
    """The workspace model saved in several shards, then edited."""
    from transformers import AutoModelForCausalLM

    out = d / "sharded"
    AutoModelForCausalLM.from_pretrained(ws.model).save_pretrained(out, max_shard_size="60KB")
    assert len(list(out.glob("*.safetensors"))) > 1
    edit(out)
    return out


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def config_edit(**changes) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        config = json.loads((model / "config.json").read_text())
        write(model / "config.json", json.dumps({**config, **changes}))

    return edit


def pickle_only(model: Path) -> None:
    (model / "model.safetensors").unlink()
    write(model / "pytorch_model.bin", "pickle")


def scores_with(ws: Workspace, d: Path, layers: object = None, raw: str | None = None, **top) -> Path:
    data = json.loads(ws.scores.read_text())
    if layers is not None:
        data["layers"] = layers
    data.update(top)
    return write(d / "scores.json", raw if raw is not None else json.dumps(data))


def keep4(**extra) -> dict:
    return {"keep": [0, 1, 2, 3], **extra}


def calib_copy(ws: Workspace, d: Path, edit: Callable[[Path], object]) -> Path:
    shutil.copy(ws.calib, d / "calib.safetensors")
    shutil.copy(ws.calib.with_name("calib.safetensors.json"), d / "calib.safetensors.json")
    edit(d / "calib.safetensors")
    return d / "calib.safetensors"


def profile_copy(ws: Workspace, d: Path, edit: Callable[[Path], object]) -> Path:
    copy = Path(shutil.copytree(ws.profile, d / "profile"))
    edit(copy)
    return copy


def disk_full(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Simulate ENOSPC: `target` (module:attribute) writes half a file, then the disk is full."""
    module, attribute = target.rsplit(":", 1)

    def full(*args, **kwargs):
        where = Path([arg for arg in args if isinstance(arg, str | Path)][-1])
        if where.is_dir():  # a model directory being saved: half a shard is there when the disk fills
            where = where / "model.safetensors"
        if where.suffix == ".safetensors":
            where.write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(f"{module}.{attribute}", full)


def rust_disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk as safetensors' Rust writer reports it (a SafetensorError, not an OSError)."""
    from safetensors import SafetensorError

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 100)
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'
        )

    monkeypatch.setattr("safetensors.torch.save_file", full)


# ---- command lines -----------------------------------------------------------------------------------


def prune(model, scores, d: Path, *extra) -> list[str]:
    return ["prune-experts", "--model", str(model), "--scores", str(scores), "--out", str(d / "out"), *extra]


def prof(model, calib, d: Path) -> list[str]:
    return ["profile", "--model", str(model), "--calib", str(calib), "--out", str(d / "out"), "--device", "cpu"]


def score(ws: Workspace, d: Path, model=None, profile=None, method="frequency", out=None) -> list[str]:
    return [
        "score", "--model", str(model or ws.model), "--method", method, "--expert-sparsity", "0.5",
        "--profile", str(profile or ws.profile), "--out", str(out or d / "out"), "--device", "cpu",
    ]  # fmt: skip


def calib(ws: Workspace, d: Path, source: str | None = None, samples="4", seq_len="16") -> list[str]:
    source = source or f"gsm8k-local:{ws.problems}"
    return [
        "calibrate", "--model", str(ws.model), "--source", source, "--samples", samples, "--seq-len", seq_len,
        "--out", str(d / "out"),
    ]  # fmt: skip


def wanda(ws: Workspace, calib_file, d: Path) -> list[str]:
    return [
        "prune-unstructured", "--model", str(ws.model), "--method", "wanda", "--sparsity", "0.5",
        "--calib", str(calib_file), "--out", str(d / "out"), "--device", "cpu",
    ]  # fmt: skip


def evaluate(model, task: str, d: Path) -> list[str]:
    return ["evaluate", "--model", str(model), "--task", task, "--out", str(d / "out"), "--device", "cpu"]


MODEL, CALIB, SCORES, PROFILE = "corrupt model directory", "bad calibration data", "bad scores file", "bad profile"
OUT, DISK, ARGS = "unsafe --out", "disk full (ENOSPC)", "bad option value"
REFUSED = "one `error:` line naming the file and the fix, exit 1, nothing at --out, no temporary left"
OUTCOMES = {
    MODEL: REFUSED,
    CALIB: REFUSED + "; data and sidecar of two runs are never mixed",
    SCORES: REFUSED + "; `--force` applies scores of other weights",
    PROFILE: REFUSED,
    OUT: "one `error:` line, the existing path untouched; `--overwrite` replaces what moeprune did not write, "
    "a file is never replaced by a directory",
    DISK: REFUSED + "; the half-written temporary is removed",
    ARGS: REFUSED,
}

CASES = [
    Case("model-missing", MODEL, lambda w, d, m: prune(d / "nope", w.scores, d), "does not exist"),
    Case("model-empty", MODEL, lambda w, d, m: prof((d / "e").mkdir() or d / "e", w.calib, d), "is empty"),
    Case("no-config", MODEL, lambda w, d, m: score(w, d, model_copy(w, d, lambda p: (p / "config.json").unlink())), "no config.json"),
    Case("config-not-json", MODEL, lambda w, d, m: prune(model_copy(w, d, lambda p: write(p / "config.json", "{oops")), w.scores, d), "is not valid JSON"),
    Case("config-a-list", MODEL, lambda w, d, m: prof(model_copy(w, d, lambda p: write(p / "config.json", "[1]")), w.calib, d), "not a JSON object"),
    Case("model-type-remote", MODEL, lambda w, d, m: prune(model_copy(w, d, config_edit(model_type="mymoe", auto_map={"AutoConfig": "x.C"})), w.scores, d), "remote code"),
    Case("model-type-unknown", MODEL, lambda w, d, m: score(w, d, model_copy(w, d, config_edit(model_type="nonesuch"))), "'nonesuch' is not a model"),
    Case("pickle-only", MODEL, lambda w, d, m: prof(model_copy(w, d, pickle_only), w.calib, d), "pickle weights"),
    Case("weights-truncated", MODEL, lambda w, d, m: prune(model_copy(w, d, lambda p: truncate(p / "model.safetensors")), w.scores, d), "is truncated"),
    Case("weights-too-short", MODEL, lambda w, d, m: score(w, d, model_copy(w, d, lambda p: write(p / "model.safetensors", "abc"))), "too short"),
    Case("weights-bad-header", MODEL, lambda w, d, m: evaluate(model_copy(w, d, lambda p: write(p / "model.safetensors", "\x10" + "\0" * 7 + "not json{}{}{}{}")), f"perplexity:{w.problems}", d), "corrupt safetensors header"),
    Case("shard-missing", MODEL, lambda w, d, m: prune(sharded(w, d, lambda p: sorted(p.glob("model-*.safetensors"))[1].unlink()), w.scores, d), "lacks the shard"),
    Case("shard-index-broken", MODEL, lambda w, d, m: prof(sharded(w, d, lambda p: write(p / "model.safetensors.index.json", "[]")), w.calib, d), "not a shard index"),
    Case("calib-missing", CALIB, lambda w, d, m: prof(w.model, d / "none.safetensors", d), "does not exist"),
    Case("calib-truncated", CALIB, lambda w, d, m: prof(w.model, calib_copy(w, d, truncate), d), "truncated"),
    Case("calib-not-safetensors", CALIB, lambda w, d, m: wanda(w, write(d / "c.safetensors", "hello"), d), "too short"),
    Case("calib-sidecar-mismatch", CALIB, lambda w, d, m: prof(w.model, calib_copy(w, d, lambda p: write(p.with_name(p.name + ".json"), json.dumps({"sha256": "0" * 64}))), d), "does not match its sidecar"),
    Case("calib-source-unknown", CALIB, lambda w, d, m: calib(w, d, source="ftp:x"), "unknown calibration source"),
    Case("calib-source-missing", CALIB, lambda w, d, m: calib(w, d, source=f"gsm8k-local:{d / 'none.jsonl'}"), "does not exist"),
    Case("calib-source-not-jsonl", CALIB, lambda w, d, m: calib(w, d, source=f"gsm8k-local:{write(d / 'p.jsonl', '{oops')}"), "is not valid JSON"),
    Case("calib-samples-zero", CALIB, lambda w, d, m: calib(w, d, samples="0"), "--samples: Input should be greater than 0"),
    Case("calib-seq-len-too-long", CALIB, lambda w, d, m: calib(w, d, seq_len="4096"), "exceeds the model's context"),
    Case("scores-just-5", SCORES, lambda w, d, m: prune(w.model, write(d / "s.json", "5"), d), "holds a JSON int"),
    Case("scores-not-json", SCORES, lambda w, d, m: prune(w.model, write(d / "s.json", "{"), d), "is not valid JSON"),
    Case("scores-no-layers", SCORES, lambda w, d, m: prune(w.model, write(d / "s.json", '{"method": "x"}'), d), "lacks"),
    Case("scores-nan", SCORES, lambda w, d, m: prune(w.model, scores_with(w, d, {"0": keep4(scores=[float("nan")] * 8), "1": keep4()}), d), "finite"),
    Case("scores-infinity", SCORES, lambda w, d, m: prune(w.model, scores_with(w, d, {"0": keep4(scores=[1e999] * 8), "1": keep4()}), d), "finite"),
    Case("scores-keys-0-and-00", SCORES, lambda w, d, m: prune(w.model, scores_with(w, d, {"0": keep4(), "00": keep4(), "1": keep4()}), d), "'00' is not a layer index"),
    Case("scores-key-twice", SCORES, lambda w, d, m: prune(w.model, scores_with(w, d, raw='{"method": "m", "expert_sparsity": 0.5, "layers": {"0": {"keep": [0]}, "0": {"keep": [1]}}}'), d), "appear twice"),
    Case("scores-merge-bool", SCORES, lambda w, d, m: prune(w.model, scores_with(w, d, {"0": keep4(merge={"1": [1, True]}), "1": keep4()}), d), "integer experts"),
    Case("scores-keep-bool", SCORES, lambda w, d, m: prune(w.model, scores_with(w, d, {"0": {"keep": [True, 1]}, "1": keep4()}), d), "integer expert indices"),
    Case("scores-keep-out-of-range", SCORES, lambda w, d, m: prune(w.model, scores_with(w, d, {"0": {"keep": [0, 1, 2, 99]}, "1": keep4()}), d), "out of range"),
    Case("scores-layer-missing", SCORES, lambda w, d, m: prune(w.model, scores_with(w, d, {"0": keep4()}), d), "no keep-set for MoE layer"),
    Case("scores-other-model", SCORES, lambda w, d, m: prune(w.other, w.scores, d), "--force"),
    Case("profile-empty-dir", PROFILE, lambda w, d, m: score(w, d, profile=profile_copy(w, d, lambda p: (p / "profile.safetensors").unlink())), "no profile.safetensors"),
    Case("profile-truncated", PROFILE, lambda w, d, m: score(w, d, profile=profile_copy(w, d, lambda p: truncate(p / "profile.safetensors"))), "truncated"),
    Case("profile-other-model", PROFILE, lambda w, d, m: score(w, d, model=w.other), "other weights"),
    Case("out-has-user-files", OUT, lambda w, d, m: write((d / "out").mkdir() or d / "out" / "notes.txt", "mine") and prune(w.model, w.scores, d), "--overwrite"),
    Case("out-is-the-input", OUT, lambda w, d, m: ["prune-experts", "--model", str(model_copy(w, d)), "--scores", str(w.scores), "--out", str(d / "model")], "is the input"),
    Case("out-contains-the-input", OUT, lambda w, d, m: ["prune-experts", "--model", str(model_copy(w, d)), "--scores", str(w.scores), "--out", str(d)], "contains the input"),
    Case("out-inside-the-input", OUT, lambda w, d, m: ["prune-experts", "--model", str(model_copy(w, d)), "--scores", str(w.scores), "--out", str(d / "model" / "out")], "lies inside the input"),
    Case("out-is-a-file", OUT, lambda w, d, m: write(d / "out", "a file") and prune(w.model, w.scores, d), "a file is never replaced"),
    Case("out-is-a-dir-for-a-file", OUT, lambda w, d, m: (d / "out").mkdir() or write(d / "out" / "x", "") and score(w, d), "is a directory"),
    Case("out-under-a-file", OUT, lambda w, d, m: score(w, d, out=write(d / "f", "") / "s.json"), "lies under the file"),
    Case("out-dot", OUT, lambda w, d, m: m.chdir(d) or ["prune-experts", "--model", str(w.model), "--scores", str(w.scores), "--out", "."], "current directory"),
    Case("testbed-out-has-user-files", OUT, lambda w, d, m: write((d / "out").mkdir() or d / "out" / "notes.txt", "mine") and ["testbed", "lm", "--quick", "--out", str(d / "out")], "--overwrite"),
    Case("out-sidecar-is-user-file", OUT, lambda w, d, m: write(d / "out.json", "my notes") and calib(w, d), "writes beside --out"),
    Case("out-foreign-json", OUT, lambda w, d, m: write(d / "out", '{"my": "notes"}') and score(w, d), "not an earlier `moeprune score`"),
    Case("enospc-calibrate", DISK, lambda w, d, m: disk_full(m, "safetensors.torch:save_file") or calib(w, d), "disk is full"),
    Case("enospc-prune-experts", DISK, lambda w, d, m: disk_full(m, "moeprune.checkpoint.writer:write_file") or prune(w.model, w.scores, d), "disk is full"),
    Case("enospc-score", DISK, lambda w, d, m: disk_full(m, "moeprune.outputs.atomic:os.replace") or score(w, d), "disk is full"),
    Case("enospc-profile-rust-writer", DISK, lambda w, d, m: rust_disk_full(m) or prof(w.model, w.calib, d), "disk is full"),
    Case("score-unknown-method", ARGS, lambda w, d, m: score(w, d, method="best"), "best"),
    Case("evaluate-unknown-task", ARGS, lambda w, d, m: evaluate(w.model, "mmlu", d), "unknown evaluation task"),
    Case("evaluate-task-data-missing", ARGS, lambda w, d, m: evaluate(w.model, f"perplexity:{d / 'none.txt'}", d), "does not exist"),
]  # fmt: skip


def _snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _leftovers(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_error_line_and_writes_nothing(case, ws, tmp_path, monkeypatch):
    d = tmp_path / "case"
    d.mkdir()
    args = case.args(ws, d, monkeypatch)
    out = Path(args[args.index("--out") + 1])
    out = out if out.is_absolute() else d / out
    before = _snapshot(out) if out.exists() else None
    result = runner.invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not PROGRESS.search(line)]
    assert result.exit_code == 1, (result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert case.expect in lines[0], lines[0]
    assert (_snapshot(out) if out.exists() else None) == before, "--out was changed"
    assert not _leftovers(tmp_path, ws.model.parent), _leftovers(tmp_path, ws.model.parent)


def test_the_table_covers_at_least_30_inputs_and_every_fault_class():
    assert len(CASES) >= 30 and len({case.id for case in CASES}) == len(CASES)
    assert {case.fault for case in CASES} == set(OUTCOMES)
