"""Stage `prune-unstructured`: zero individual weights, layer by layer, expert-aware."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from moeprune.arch import get_adapter, load_model, save_model_dir
from moeprune.arch.linears import count_weights
from moeprune.errors import MoepruneError
from moeprune.io_utils import atomic_dir, write_json
from moeprune.lineage import base_stats, build_lineage, read_lineage, write_lineage, write_model_card
from moeprune.pruning.masks import check_nm, check_sparsity
from moeprune.pruning.sequential import PruneSettings, prune_model
from moeprune.pruning.unstructured import get_unstructured_method, total_to_unstructured_rate

REPORT_FILE = "sparsity_report.json"
TARGETS = ("all", "experts")


def parse_nm(nm: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4); a clear error for anything else."""
    if nm is None:
        return None
    try:
        n, m = (int(part) for part in nm.split(":"))
    except ValueError:
        raise MoepruneError(f"--nm '{nm}' is not an N:M pattern; write it like 2:4") from None
    check_nm(n, m)
    return n, m


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


def _rate(model_dir: Path, adapter, model, sparsity, total_sparsity, targets) -> float:
    if total_sparsity is None:
        return float(sparsity)
    record = read_lineage(model_dir)
    stats = record["base_stats"] if record else base_stats(model)
    _, nonzero = count_weights(adapter)
    targeted, _ = count_weights(adapter, targets)
    return total_to_unstructured_rate(total_sparsity, stats["prunable_params"], nonzero, targeted)


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
) -> dict[str, Any]:
    """Prune `model` and write `out` (atomically) with its lineage and per-layer sparsity report."""
    start = time.perf_counter()
    if method == "none":
        return _copy(model, out, start)
    spec = get_unstructured_method(method)
    pattern = parse_nm(nm)
    _check_arguments(spec, sparsity, total_sparsity, pattern, owl, calib, targets)
    if streaming:
        raise MoepruneError("--streaming is not available for prune-unstructured yet; run without it")
    net = load_model(model)
    adapter = get_adapter(net)
    rate = 1.0 - pattern[0] / pattern[1] if pattern else _rate(model, adapter, net, sparsity, total_sparsity, targets)
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
    record = build_lineage(stage="prune-unstructured", params=params, parent=model, parent_model=net, calibration=calib)
    batches = _batches(calib, batch_size) if (spec.needs_inputs or owl) else []
    report = prune_model(net, adapter, batches, settings)
    record["params"]["layer_sparsities"] = [round(s, 6) for s in settings.layer_sparsities]
    zeros = sum(entry["zeros"] for entry in report)
    weights = sum(entry["weights"] for entry in report)
    summary = {
        "method": method,
        "rate": rate,
        "weight_sparsity": zeros / weights if weights else 0.0,
        "layers": report,
        "seconds": round(time.perf_counter() - start, 3),
    }
    with atomic_dir(out) as tmp:
        save_model_dir(net, model, tmp)
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


def _batches(calib: Path, batch_size: int) -> list:
    from moeprune.data.calibration import calibration_batches

    return list(calibration_batches(calib, batch_size))


def _copy(model: Path, out: Path, start: float) -> dict[str, Any]:
    """`--method none`: the model unchanged, with a lineage entry, so a pipeline can skip the step."""
    net = load_model(model)
    record = build_lineage(stage="prune-unstructured", params={"method": "none"}, parent=model, parent_model=net)
    with atomic_dir(out) as tmp:
        save_model_dir(net, model, tmp)
        write_lineage(tmp, record)
        write_json(tmp / REPORT_FILE, {"method": "none", "rate": 0.0, "layers": []})
        write_model_card(tmp, record, ["No unstructured pruning (a copy of the parent)."])
    return {"method": "none", "rate": 0.0, "seconds": round(time.perf_counter() - start, 3)}
