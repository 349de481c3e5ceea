"""`moeprune`: one subcommand per pipeline stage (docs/design.md, "The stages and their contracts").

Each command parses its flags, builds the stage's params model (`moeprune.params`, validated once, here) and
calls `moeprune.stages.<stage>.run(...)` with it and the paths; nothing else lives here.
"""

from __future__ import annotations

from moeprune.env import apply_offline_defaults

apply_offline_defaults()  # before transformers, datasets, mlflow, prefect or dvc are imported

import errno  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
from enum import StrEnum  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, NoReturn  # noqa: E402

import typer  # noqa: E402

from moeprune.catalog.scorers import SCORERS  # noqa: E402
from moeprune.catalog.tasks import TASKS, usage  # noqa: E402
from moeprune.catalog.unstructured import UNSTRUCTURED, unstructured_choices  # noqa: E402
from moeprune.errors import MoepruneError  # noqa: E402
from moeprune.params import (  # noqa: E402
    TESTBED_FAMILIES,
    CalibrateSection,
    EvaluateSection,
    M,
    ProfileOptions,
    RegistrySection,
    ScoreSection,
    TestbedOptions,
    UnstructuredSection,
    from_flags,
    registry_section,
)
from moeprune.testbed.presets import PRESETS  # noqa: E402

_PRESET_HELP = ", ".join(
    f"{name} ({p.size.experts} experts, top-{p.size.top_k}, {p.pretrain.steps} pretraining steps)"
    for name, p in PRESETS.items()
)

app = typer.Typer(
    name="moeprune",
    help="Prune Mixture-of-Experts models and keep the record of every pruned version.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _call(stage: str, **kwargs: Any) -> Any:
    """Run `moeprune.stages.<stage>.run(**kwargs)`, turning user errors into one line and exit 1."""
    module = importlib.import_module(f"moeprune.stages.{stage}")
    try:
        return module.run(**kwargs)
    except MoepruneError as exc:
        _fail(str(exc))
    except OSError as exc:
        if exc.errno not in _SYSTEM_FAULTS:
            raise
        _fail(_system_fault(exc))


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1) from None


def _params(model: type[M], **values: Any) -> M:
    """The stage's params model (`moeprune.params`) built from the command's flags; a bad value exits 1."""
    try:
        return from_flags(model, **values)
    except MoepruneError as exc:
        _fail(str(exc))


def _registry(params: Path | None) -> RegistrySection | None:
    """The `registry` section of the params file `--params` names (None without one); a bad file exits 1."""
    try:
        return registry_section(params)
    except MoepruneError as exc:
        _fail(str(exc))


_SYSTEM_FAULTS = {
    errno.ENOSPC: "the disk is full; free space (or point --out at another disk) and run again",
    errno.EDQUOT: "the disk quota is exceeded; free space (or point --out at another disk) and run again",
    errno.EROFS: "the file system is read-only; point --out at a writable place",
    errno.EACCES: "permission denied; fix the permissions, or use paths you may read and write",
}


def _system_fault(exc: OSError) -> str:
    """One line for a fault of the machine rather than of the input (nothing is left half-written)."""
    where = f" at '{exc.filename}'" if exc.filename else ""
    return f"{exc.strerror or exc}{where}: {_SYSTEM_FAULTS[exc.errno]}"


ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Hugging Face model directory.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output path (written atomically).")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (a CUDA GPU, else MPS, else the CPU), cpu, cuda, cuda:N or mps.")
]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace an existing --out that is not an earlier output of this stage."),
]


def _methods_needing(registry: Any, need: str) -> str:
    """The methods that need `need`, with those that need it only under an option (`stun with lambda2`)."""
    names = [entry.name for entry in registry.entries() if need in entry.needs]
    names += [
        f"{e.name} with {e.needs_when[need]}" for e in registry.entries() if need in e.facts.get("needs_when", {})
    ]
    return ", ".join(names)


# Help texts that list methods and tasks are built from their registries (moeprune.catalog).
SCORE_METHOD_HELP = f"{', '.join(SCORERS.names())}."
SCORE_OPTION_HELP = "Method option KEY=VALUE (repeatable): " + "; ".join(
    f"{entry.name}: {', '.join(f'{name}={option.example}' for name, option in entry.options.items())}"
    for entry in SCORERS.entries()
    if entry.options
)
UNSTRUCTURED_METHOD_HELP = f"{', '.join(UNSTRUCTURED.names())}, or {unstructured_choices()[-1]} (copy)."
TASK_HELP = f"{', '.join(usage(task) for task in TASKS.entries())} (comma-separated)."
STREAMING_TASKS = ", ".join(task.name for task in TASKS.entries() if task.streams)


class TestbedKind(StrEnum):
    lm = "lm"
    vision = "vision"


@app.command()
def inspect(
    model: ModelOpt,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show family, MoE layers, experts, top_k, gate, shared experts and parameter counts."""
    _call("inspect", model=model, as_json=json_output)


@app.command()
def testbed(
    kind: Annotated[TestbedKind, typer.Argument(help="lm (GSM8K-style word problems) or vision (digits V-MoE).")],
    out: OutOpt,
    family: Annotated[
        str | None, typer.Option(help=f"LM family: {', '.join(TESTBED_FAMILIES)} (default: the preset's).")
    ] = None,
    preset: Annotated[str | None, typer.Option(help=f"LM build plan: {_PRESET_HELP}.")] = None,
    seed: int = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny models trained for seconds (tests).")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Build the embedded testbed: a pretrained and a fine-tuned MoE model plus their data."""
    params = _params(TestbedOptions, family=family, preset=preset, seed=seed, quick=quick)
    _call("testbed", kind=kind.value, out=out, params=params, overwrite=overwrite)


@app.command()
def calibrate(
    model: ModelOpt,
    source: Annotated[str, typer.Option(help="gsm8k-local:PATH, text:PATH, imagefolder:DIR or hf:NAME[:SPLIT].")],
    samples: Annotated[int, typer.Option(help="Number of calibration samples.")],
    out: OutOpt,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sample (ignored for images).")] = 128,
    seed: int = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Draw calibration samples (tokens or images) into a safetensors file with a JSON sidecar."""
    params = _params(CalibrateSection, source=source, samples=samples, seq_len=seq_len, seed=seed)
    _call("calibrate", model=model, out=out, params=params, overwrite=overwrite)


@app.command()
def profile(
    model: ModelOpt,
    calib: Annotated[Path, typer.Option(help="Calibration file from `moeprune calibrate`.")],
    out: OutOpt,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    streaming: Annotated[bool, typer.Option("--streaming", help="One decoder layer in memory at a time.")] = False,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Record routing and activation statistics of every MoE layer on the calibration data."""
    params = _params(ProfileOptions, streaming=streaming, **{"batch-size": batch_size})
    _call("profile", model=model, calib=calib, out=out, params=params, device=device, overwrite=overwrite)


def _split_options(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` pairs as strings; `stages.score.parse_options` checks them against the method's declaration."""
    options: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"--option wants KEY=VALUE, got '{pair}'")
        key, value = pair.split("=", 1)
        options[key] = value
    return options


@app.command()
def score(
    model: ModelOpt,
    method: Annotated[
        str,
        typer.Option(help=SCORE_METHOD_HELP),
    ],
    expert_sparsity: Annotated[
        float, typer.Option("--expert-sparsity", help="Fraction of routed experts to remove per layer.")
    ],
    out: OutOpt,
    profile: Annotated[
        Path | None, typer.Option(help=f"Profile directory ({_methods_needing(SCORERS, 'profile')}).")
    ] = None,
    reference: Annotated[
        Path | None, typer.Option(help=f"Pretrained checkpoint ({_methods_needing(SCORERS, 'reference')}).")
    ] = None,
    calib: Annotated[
        Path | None, typer.Option(help=f"Calibration file ({_methods_needing(SCORERS, 'calibration')}).")
    ] = None,
    seed: int = 0,
    option: Annotated[list[str] | None, typer.Option("--option", help=SCORE_OPTION_HELP)] = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Score every routed expert and choose the keep-set of each MoE layer."""
    params = _params(ScoreSection, method=method, expert_sparsity=expert_sparsity, seed=seed)
    inputs = {"profile": profile, "reference": reference, "calib": calib, "options": _split_options(option or [])}
    _call("score", model=model, out=out, params=params, device=device, overwrite=overwrite, **inputs)


@app.command("prune-experts")
def prune_experts(
    model: ModelOpt,
    scores: Annotated[Path, typer.Option(help="Scores file from `moeprune score` (or written by hand).")],
    out: OutOpt,
    force: Annotated[
        bool, typer.Option("--force", help="Apply scores computed on other weights (model_sha256 differs).")
    ] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Remove the experts a scores file does not keep; the result loads with stock transformers."""
    result = _call("prune_experts", model=model, scores=scores, out=out, force=force, overwrite=overwrite)
    typer.echo(f"{out}: {result['experts_before']} -> {result['experts_after']} experts per MoE layer")


@app.command("prune-unstructured")
def prune_unstructured(
    model: ModelOpt,
    method: Annotated[str, typer.Option(help=UNSTRUCTURED_METHOD_HELP)],
    out: OutOpt,
    sparsity: Annotated[float | None, typer.Option(help="Unstructured sparsity of the targeted weights.")] = None,
    total_sparsity: Annotated[
        float | None, typer.Option("--total-sparsity", help="Reach this total sparsity vs the base.")
    ] = None,
    calib: Annotated[
        Path | None, typer.Option(help=f"Calibration file ({_methods_needing(UNSTRUCTURED, 'calibration')}, owl).")
    ] = None,
    owl: Annotated[bool, typer.Option("--owl", help="OWL outlier-weighted per-layer sparsity.")] = False,
    nm: Annotated[str | None, typer.Option("--nm", help="N:M pattern, e.g. 2:4.")] = None,
    targets: Annotated[str, typer.Option(help="all or experts.")] = "all",
    calibrate_all_experts: Annotated[bool, typer.Option("--calibrate-all-experts")] = False,
    streaming: Annotated[bool, typer.Option("--streaming")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Zero individual weights layer by layer (expert-aware Wanda / SparseGPT, OWL, N:M)."""
    flags = {"sparsity": sparsity, "total-sparsity": total_sparsity, "owl": owl, "nm": nm, "targets": targets}
    flags |= {"calibrate-all-experts": calibrate_all_experts, "streaming": streaming, "batch-size": batch_size}
    params = _params(UnstructuredSection, method=method, options=flags)
    _call("prune_unstructured", model=model, out=out, params=params, calib=calib, device=device, overwrite=overwrite)


@app.command()
def evaluate(
    model: ModelOpt,
    task: Annotated[
        str,
        typer.Option(help=TASK_HELP),
    ],
    out: OutOpt,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N examples only.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    include_path: Annotated[
        Path | None, typer.Option("--include-path", help="Folder of lm-eval task YAMLs (lm-eval: tasks).")
    ] = None,
    backend: Annotated[str, typer.Option(help="lm-eval backend for lm-eval: tasks: hf or vllm.")] = "hf",
    streaming: Annotated[
        bool, typer.Option("--streaming", help=f"{STREAMING_TASKS}: one decoder layer in memory at a time.")
    ] = False,
) -> None:
    """Measure task accuracy plus sparsity and size figures; write a flat metrics JSON."""
    lm_eval = {"backend": backend, "include-path": None if include_path is None else str(include_path)}
    params = _params(EvaluateSection, task=task, limit=limit, batch_size=batch_size, lm_eval=lm_eval)
    _call("evaluate", model=model, out=out, params=params, streaming=streaming, device=device, overwrite=overwrite)


@app.command()
def register(
    model: ModelOpt,
    metrics: Annotated[Path, typer.Option(help="Metrics JSON from `moeprune evaluate`.")],
    params: Annotated[Path | None, typer.Option(help="params.yaml (registry settings).")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri")] = None,
) -> None:
    """Register a model directory as an MLflow model version with its metrics and lineage."""
    section = _registry(params)
    _call("register", model=model, metrics=metrics, params=section, tracking_uri=tracking_uri)


@app.command("check-params")
def check_params(
    params: Annotated[Path, typer.Option(help="The params file to validate.")] = Path("params.yaml"),
) -> None:
    """Validate params.yaml (every DVC stage runs this first): silent if valid, else one error line."""
    _call("check_params", params=params)


@app.command()
def promote(
    params: Annotated[Path | None, typer.Option(help="params.yaml (promotion policy).")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the decision, change nothing.")] = False,
) -> None:
    """Move the `champion` alias to the best version that passes the promotion policy."""
    _call("promote", params=params, tracking_uri=tracking_uri, dry_run=dry_run)


def _flow(flow: str, **options: Any) -> None:
    """Run `python -m flows.<flow>` (`stages.flows_door`); exit with its status when it failed."""
    status = _call("flows_door", flow=flow, options=options)
    if status:
        raise typer.Exit(status)


@app.command()
def sweep(
    params: Annotated[Path | None, typer.Option(help="params.yaml (sweep grid).")] = None,
    dask_address: Annotated[str | None, typer.Option("--dask-address", help="Run on this Dask cluster.")] = None,
) -> None:
    """Run the sweep grid as DVC experiments through a Prefect flow (`python -m flows.sweep`)."""
    _flow("sweep", params=params, dask_address=dask_address)


@app.command()
def serve(params: Annotated[Path | None, typer.Option(help="params.yaml (schedules).")] = None) -> None:
    """Serve the Prefect deployments (nightly sweep, promotion) with their cron schedules (`python -m flows.serve`)."""
    _flow("serve", params=params)


@app.command()
def report(
    out: OutOpt,
    params: Annotated[Path | None, typer.Option(help="params.yaml (registry settings).")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri")] = None,
    study: Annotated[Path | None, typer.Option(help="Study results file (runs/study/study.json).")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the results report (tables and plots) from the registry or a study results file."""
    section = _registry(params)
    _call("report", out=out, params=section, tracking_uri=tracking_uri, study=study, overwrite=overwrite)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
