"""Every stage's `moeprune` command line, built in one place: one function per stage, returning its argv.

    calibrate(model="m", source="text:f.txt", samples=8, seq_len=64, seed=0, out="c.safetensors")
    -> ["calibrate", "--model", "m", "--source", "text:f.txt", "--samples", "8", ..., "--out", "c.safetensors"]

An argv is exactly what follows `moeprune` (`moeprune <argv>` in a shell does the same; the study's
worker process passes it to the CLI app as is). Flags come in dvc.yaml's order and an option left as
None is not passed (the command's default applies). Option sections of params.yaml (`testbed.options`,
`profile`, `prune_unstructured.options`, `evaluate.lm_eval`) become flags the way DVC unpacks a
`${section}`: `--key value`, `--key` for true, nothing for false.

Who uses it: `pipeline_commands(params)` is what dvc.yaml runs for a params.yaml, stage by stage (the
pipeline flow logs it before each stage; tests/flows/test_stage_commands.py renders dvc.yaml with DVC and
checks the two are equal, so they cannot drift); `PipelineFiles` names the files the stages write (the
pipeline flow registers from them); the study (flows/study_plan.py) builds all its commands here.
dvc.yaml itself keeps its `${...}` commands: DVC needs them to rerun a stage when a parameter changes.

Pure strings: no Prefect, no torch, no DVC.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moeprune.params import Params

Argv = list[str]
PathLike = str | Path
NO_OPTIONS: Mapping[str, Any] = {}


def text(value: Any) -> str:
    """A value as dvc.yaml writes it into a command: `true`/`false` for booleans, else `str`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def option_flags(options: Mapping[str, Any]) -> Argv:
    """A params section as flags, the way DVC unpacks `${section}` (store_true booleans, nargs lists).

    `{"seed": 0, "quick": True, "owl": False}` -> `["--seed", "0", "--quick"]`; a list gives
    `--key a b`; None means "not given" (DVC would write the text "None", which no command accepts).
    """
    flags: Argv = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        if value is True:
            flags.append(f"--{key}")
        elif isinstance(value, list | tuple):
            flags += [f"--{key}", *(text(item) for item in value)]
        else:
            flags += [f"--{key}", text(value)]
    return flags


def given(flag: str, value: Any) -> Argv:
    """`[flag, value]`, or nothing when the value is None."""
    return [] if value is None else [flag, text(value)]


def shell(argv: Argv) -> str:
    """An argv as one shell line: `moeprune ...`."""
    return "moeprune " + shlex.join(argv)


def check_params(params: PathLike = "params.yaml") -> Argv:
    """`moeprune check-params`: every dvc.yaml stage runs it first."""
    return ["check-params", "--params", str(params)]


def testbed(kind: str, out: PathLike, options: Mapping[str, Any] = NO_OPTIONS) -> Argv:
    """`moeprune testbed KIND --out OUT [--preset --family --seed --quick]`."""
    return ["testbed", kind, "--out", str(out), *option_flags(options)]


def calibrate(model: PathLike, source: str, samples: int, seq_len: int, seed: int, out: PathLike) -> Argv:
    """`moeprune calibrate`: calibration samples of a model."""
    return [
        "calibrate",
        *("--model", str(model), "--source", source, "--samples", text(samples)),
        *("--seq-len", text(seq_len), "--seed", text(seed), "--out", str(out)),
    ]


def profile(
    model: PathLike,
    calib: PathLike,
    out: PathLike,
    device: str | None = None,
    options: Mapping[str, Any] = NO_OPTIONS,
) -> Argv:
    """`moeprune profile`: routing and activation statistics; `options` as params `profile:`."""
    return [
        "profile",
        *("--model", str(model), "--calib", str(calib), "--out", str(out)),
        *given("--device", device),
        *option_flags(options),
    ]


def score(
    model: PathLike,
    method: str,
    expert_sparsity: float,
    seed: int,
    out: PathLike,
    *,
    profile: PathLike | None = None,
    reference: PathLike | None = None,
    calib: PathLike | None = None,
    device: str | None = None,
) -> Argv:
    """`moeprune score`: the keep-set of every MoE layer (pass only the inputs the method reads)."""
    return [
        "score",
        *("--model", str(model), "--method", method),
        *given("--profile", profile),
        *given("--reference", reference),
        *given("--calib", calib),
        *("--expert-sparsity", text(expert_sparsity), "--seed", text(seed)),
        *given("--device", device),
        *("--out", str(out)),
    ]


def prune_experts(model: PathLike, scores: PathLike, out: PathLike) -> Argv:
    """`moeprune prune-experts`: drop the experts a scores file does not keep."""
    return ["prune-experts", "--model", str(model), "--scores", str(scores), "--out", str(out)]


def prune_unstructured(
    model: PathLike,
    method: str,
    out: PathLike,
    options: Mapping[str, Any],
    calib: PathLike | None = None,
    device: str | None = None,
) -> Argv:
    """`moeprune prune-unstructured`; `options` as params `prune_unstructured.options` (`total-sparsity`...)."""
    return [
        "prune-unstructured",
        *("--model", str(model), "--method", method),
        *option_flags(options),
        *given("--calib", calib),
        *given("--device", device),
        *("--out", str(out)),
    ]


def evaluate(
    model: PathLike,
    task: str,
    out: PathLike,
    limit: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    lm_eval: Mapping[str, Any] = NO_OPTIONS,
) -> Argv:
    """`moeprune evaluate`; `lm_eval` as params `evaluate.lm_eval` (`backend`, `include-path`)."""
    return [
        "evaluate",
        *("--model", str(model), "--task", task),
        *given("--limit", limit),
        *given("--batch-size", batch_size),
        *given("--device", device),
        *option_flags(lm_eval),
        *("--out", str(out)),
    ]


def register(
    model: PathLike, metrics: PathLike, params: PathLike | None = None, tracking_uri: str | None = None
) -> Argv:
    """`moeprune register`: one MLflow model version with its metrics."""
    return [
        "register",
        *("--model", str(model), "--metrics", str(metrics)),
        *given("--params", params),
        *given("--tracking-uri", tracking_uri),
    ]


def report(out: PathLike, params: PathLike | None = None, study: PathLike | None = None) -> Argv:
    """`moeprune report`: tables and plots from the registry or a study file."""
    return ["report", "--out", str(out), *given("--params", params), *given("--study", study)]


@dataclass(frozen=True)
class PipelineFiles:
    """Where dvc.yaml's stages write for one `kind` (paths relative to the pipeline's folder)."""

    kind: str

    @property
    def runs(self) -> Path:
        return Path("runs") / self.kind

    @property
    def calib(self) -> Path:
        return self.runs / "calib.safetensors"

    @property
    def profile(self) -> Path:
        return self.runs / "profile"

    @property
    def scores(self) -> Path:
        return self.runs / "scores.json"

    @property
    def experts_pruned(self) -> Path:
        return self.runs / "experts_pruned"

    @property
    def pruned(self) -> Path:
        return self.runs / "pruned"

    @property
    def report(self) -> Path:
        return self.runs / "report"

    @property
    def base_metrics(self) -> Path:
        return Path("metrics") / self.kind / "base.json"

    @property
    def pruned_metrics(self) -> Path:
        return Path("metrics") / self.kind / "pruned.json"


def section(options: Any) -> dict[str, Any]:
    """The keys of a params section as written in params.yaml (aliases, only those given)."""
    return options.model_dump(by_alias=True, exclude_unset=True, exclude_none=True)


def pipeline_commands(params: Params, params_file: PathLike = "params.yaml") -> dict[str, list[Argv]]:
    """The commands of every dvc.yaml stage for these parameters, in stage order (check-params first)."""
    files, model, device = PipelineFiles(params.kind), params.model, params.device
    cal, ev, unstructured = params.calibrate, params.evaluate, params.prune_unstructured

    def evaluation(model_dir: PathLike, out: PathLike) -> Argv:
        return evaluate(model_dir, ev.task, out, ev.limit, ev.batch_size, device, section(ev.lm_eval))

    stages = {
        "testbed": [testbed(params.kind, params.testbed.out, section(params.testbed.options))],
        "calibrate": [calibrate(model.path, cal.source, cal.samples, cal.seq_len, cal.seed, files.calib)],
        "profile": [profile(model.path, files.calib, files.profile, device, section(params.profile))],
        "score": [
            score(
                model.path,
                params.score.method,
                params.score.expert_sparsity,
                params.score.seed,
                files.scores,
                profile=files.profile,
                reference=model.reference,
                calib=files.calib,
                device=device,
            )
        ],
        "prune_experts": [prune_experts(model.path, files.scores, files.experts_pruned)],
        "prune_unstructured": [
            prune_unstructured(
                files.experts_pruned,
                unstructured.method,
                files.pruned,
                section(unstructured.options),
                files.calib,
                device,
            )
        ],
        "evaluate_base": [evaluation(model.path, files.base_metrics)],
        "evaluate_pruned": [evaluation(files.pruned, files.pruned_metrics)],
        "register": [
            register(model.path, files.base_metrics, params_file),
            register(files.pruned, files.pruned_metrics, params_file),
        ],
        "report": [report(files.report, params_file)],
    }
    return {stage: [check_params(params_file), *commands] for stage, commands in stages.items()}
