"""Stage `prune-unstructured`: zero individual weights, layer by layer, expert-aware."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from moeprune.checkpoint.source import ModelSource, open_model
from moeprune.devices import resolve_device
from moeprune.errors import MoepruneError
from moeprune.outputs import atomic_dir, claim_output, write_json
from moeprune.params import UnstructuredSection, parse_nm
from moeprune.pruning.sequential import PruneSettings, prune_model
from moeprune.pruning.unstructured import get_unstructured_method, total_to_unstructured_rate
from moeprune.registry.lineage import build_lineage, read_lineage, write_lineage, write_model_card

REPORT_FILE = "sparsity_report.json"


def _check_calibration(method, owl: bool, calib: Path | None) -> None:
    """The calibration file the method (or OWL) needs exists; the params model checked everything else."""
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
    out: Path,
    params: UnstructuredSection,
    calib: Path | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prune `model` and write `out` (atomically) with its lineage and per-layer sparsity report.

    Args (`model`, `out`, `device`, `overwrite`: see `moeprune.stages`):
        params: The method and its options (`moeprune.params.UnstructuredSection`).
        calib: The calibration file (methods that need inputs, OWL).

    With `params.options.streaming` (or automatically when the checkpoint exceeds the memory budget, see
    `moeprune.checkpoint.budget.use_streaming`) one decoder layer is in memory at a time and each pruned layer is
    written to `out` as soon as it is done; the result is the same as in memory.
    """
    start = time.perf_counter()
    method, opts = params.method, params.options
    out = claim_output(out, "prune-unstructured", inputs=[model, calib], overwrite=overwrite)
    if method == "none":
        return _copy(open_model(model, opts.streaming), out, start)
    spec = get_unstructured_method(method)
    _check_calibration(spec, opts.owl, calib)
    pattern = None if opts.nm is None else parse_nm(opts.nm)
    source = open_model(model, opts.streaming, resolve_device(device))
    if pattern:
        rate = 1.0 - pattern[0] / pattern[1]
    else:
        rate = _rate(model, source, opts.sparsity, opts.total_sparsity, opts.targets)
    settings = PruneSettings(
        method=spec,
        sparsity=rate,
        targets=opts.targets,
        nm=pattern,
        owl=opts.owl,
        calibrate_all_experts=opts.calibrate_all_experts,
    )
    lineage_params = {
        "method": method,
        "sparsity": rate,
        "total_sparsity": opts.total_sparsity,
        "owl": opts.owl,
        "nm": opts.nm,
        "targets": opts.targets,
        "calibrate_all_experts": opts.calibrate_all_experts,
    }
    record = build_lineage(
        stage="prune-unstructured",
        params=lineage_params,
        parent=model,
        parent_model=source.model,
        calibration=calib,
    )
    batches = _batches(calib, opts.batch_size) if (spec.needs_inputs or opts.owl) else []
    with atomic_dir(out) as tmp:
        writer = source.writer(tmp)
        report = prune_model(source, batches, settings, on_done=writer.write_block)
        writer.finish()
        record["params"]["layer_sparsities"] = [round(s, 6) for s in settings.layer_sparsities]
        summary = _summary(method, rate, report, source.streamed, start)
        write_lineage(tmp, record)
        write_json(tmp / REPORT_FILE, summary)
        nm = f" {opts.nm}" if opts.nm else ""
        write_model_card(
            tmp,
            record,
            [
                f"Unstructured pruning with `{method}`{' + OWL' if opts.owl else ''}{nm}: "
                f"{summary['weight_sparsity']:.3f} of the targeted Linear weights ({opts.targets}) are zero.",
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
