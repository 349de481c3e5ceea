"""Stage `prune-unstructured`: zero individual weights, layer by layer, expert-aware."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from moeprune.checkpoint.source import ModelSource, open_model
from moeprune.devices import resolve_device
from moeprune.errors import MoepruneError
from moeprune.io_utils import atomic_dir, write_json
from moeprune.lineage import build_lineage, read_lineage, write_lineage, write_model_card
from moeprune.outputs import claim_output
from moeprune.pruning.masks import check_sparsity
from moeprune.pruning.sequential import PruneSettings, prune_model
from moeprune.pruning.unstructured import get_unstructured_method, total_to_unstructured_rate
from moeprune.validation import parse_nm

REPORT_FILE = "sparsity_report.json"
TARGETS = ("all", "experts")


def _check_arguments(method, sparsity, total_sparsity, nm, owl, calib, targets) -> None:
    if targets not in TARGETS:
        raise MoepruneError(f"--targets '{targets}' is unknown; choose one of {', '.join(TARGETS)}")
    if (sparsity is None) == (total_sparsity is None) and nm is None:
        raise MoepruneError("give exactly one of --sparsity and --total-sparsity")
    for value in (sparsity, total_sparsity):
        if value is not None:
            check_sparsity(value)
    if nm is not None and (owl or total_sparsity is not None):
        raise MoepruneError("--nm fixes the sparsity at 1 - N/M; it cannot be combined with --owl or --total-sparsity")
    if (method.needs_inputs or owl) and calib is None:
        raise MoepruneError(f"{method.name}{' with OWL' if owl else ''} needs calibration data; pass --calib F")
    if calib is not None and not Path(calib).is_file():
        raise MoepruneError(f"calibration file '{calib}' does not exist; make it with `moeprune calibrate`")


def _rate(model_dir: Path, source: ModelSource, sparsity, total_sparsity, targets) -> float:
    if total_sparsity is None:
        return float(sparsity)
    record = read_lineage(model_dir)
    stats = record["base_stats"] if record else source.base_stats()
    return total_to_unstructured_rate(
        total_sparsity, stats["prunable_params"], source.nonzero_weights("all"), source.targeted_weights(targets)
    )


def run(
    model: Path,
    method: str,
    out: Path,
    sparsity: float | None = None,
    total_sparsity: float | None = None,
    calib: Path | None = None,
    owl: bool = False,
    nm: str | None = None,
    targets: str = "all",
    calibrate_all_experts: bool = False,
    streaming: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prune `model` and write `out` (atomically) with its lineage and per-layer sparsity report.

    With `streaming` (or automatically when the checkpoint exceeds the memory budget, see
    `moeprune.checkpoint.budget.use_streaming`) one decoder layer is in memory at a time and each pruned layer is
    written to `out` as soon as it is done; the result is the same as in memory.
    """
    start = time.perf_counter()
    out = claim_output(out, "prune-unstructured", inputs=[model, calib], overwrite=overwrite)
    if method == "none":
        return _copy(open_model(model, streaming), out, start)
    spec = get_unstructured_method(method)
    pattern = None if nm is None else parse_nm(nm, "--nm")
    _check_arguments(spec, sparsity, total_sparsity, pattern, owl, calib, targets)
    source = open_model(model, streaming, resolve_device(device))
    if pattern:
        rate = 1.0 - pattern[0] / pattern[1]
    else:
        rate = _rate(model, source, sparsity, total_sparsity, targets)
    settings = PruneSettings(
        method=spec, sparsity=rate, targets=targets, nm=pattern, owl=owl, calibrate_all_experts=calibrate_all_experts
    )
    params = {
        "method": method,
        "sparsity": rate,
        "total_sparsity": total_sparsity,
        "owl": owl,
        "nm": nm,
        "targets": targets,
        "calibrate_all_experts": calibrate_all_experts,
    }
    record = build_lineage(
        stage="prune-unstructured",
        params=params,
        parent=model,
        parent_model=source.model,
        calibration=calib,
    )
    batches = _batches(calib, batch_size) if (spec.needs_inputs or owl) else []
    with atomic_dir(out) as tmp:
        writer = source.writer(tmp)
        report = prune_model(source, batches, settings, on_done=writer.write_block)
        writer.finish()
        record["params"]["layer_sparsities"] = [round(s, 6) for s in settings.layer_sparsities]
        summary = _summary(method, rate, report, source.streamed, start)
        write_lineage(tmp, record)
        write_json(tmp / REPORT_FILE, summary)
        write_model_card(
            tmp,
            record,
            [
                f"Unstructured pruning with `{method}`{' + OWL' if owl else ''}{f' {nm}' if nm else ''}: "
                f"{summary['weight_sparsity']:.3f} of the targeted Linear weights ({targets}) are zero.",
            ],
        )
    return summary


def _summary(method: str, rate: float, report: list[dict[str, Any]], streamed: bool, start: float) -> dict[str, Any]:
    zeros = sum(entry["zeros"] for entry in report)
    weights = sum(entry["weights"] for entry in report)
    return {
        "method": method,
        "rate": rate,
        "weight_sparsity": zeros / weights if weights else 0.0,
        "layers": report,
        "streaming": streamed,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _batches(calib: Path, batch_size: int) -> list:
    from moeprune.data.calibration import calibration_batches

    return calibration_batches(calib, batch_size)


def _copy(source: ModelSource, out: Path, start: float) -> dict[str, Any]:
    """`--method none`: the model unchanged, with a lineage entry, so a pipeline can skip the step."""
    record = build_lineage(
        stage="prune-unstructured", params={"method": "none"}, parent=source.model_dir, parent_model=source.model
    )
    with atomic_dir(out) as tmp:
        writer = source.writer(tmp)
        for index in range(source.num_blocks):
            with source.block(index) as block:
                writer.write_block(index, block)
        writer.finish()
        write_lineage(tmp, record)
        write_json(tmp / REPORT_FILE, {"method": "none", "rate": 0.0, "layers": []})
        write_model_card(tmp, record, ["No unstructured pruning (a copy of the parent)."])
    return {"method": "none", "rate": 0.0, "seconds": round(time.perf_counter() - start, 3)}
