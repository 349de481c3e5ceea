"""Stage `prune-unstructured`: zero individual weights, layer by layer, expert-aware."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from moeprune.arch import get_adapter, load_model, save_model_dir
from moeprune.arch.linears import base_stats, count_weights
from moeprune.devices import resolve_device
from moeprune.errors import MoepruneError
from moeprune.io_utils import atomic_dir, write_json
from moeprune.layerwise import InMemoryBlocks
from moeprune.lineage import build_lineage, read_lineage, write_lineage, write_model_card
from moeprune.outputs import claim_output
from moeprune.pruning.masks import check_sparsity
from moeprune.pruning.sequential import PruneSettings, prune_model
from moeprune.pruning.unstructured import get_unstructured_method, total_to_unstructured_rate
from moeprune.streaming import (
    StreamingModel,
    StreamingWriter,
    count_streamed_targets,
    count_streamed_weights,
    use_streaming,
)
from moeprune.streaming import base_stats as streaming_base_stats
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


def _open(model: Path, streaming: bool, device: torch.device):
    """The blocks to prune: a streamed checkpoint when asked for or too large for memory, else the loaded model."""
    if use_streaming(model, streaming):
        return StreamingModel(model, device=device), True
    net = load_model(model, device=device)
    return InMemoryBlocks(net, get_adapter(net)), False


def _original_stats(source, streamed: bool) -> dict[str, Any]:
    return streaming_base_stats(source) if streamed else base_stats(source.model)


def _rate(model_dir: Path, source, streamed: bool, sparsity, total_sparsity, targets) -> float:
    if total_sparsity is None:
        return float(sparsity)
    record = read_lineage(model_dir)
    stats = record["base_stats"] if record else _original_stats(source, streamed)
    if streamed:
        _, nonzero = count_streamed_weights(source)  # one read of every layer
        targeted = count_streamed_targets(source, targets)  # shapes only
    else:
        _, nonzero = count_weights(source.adapter)
        targeted, _ = count_weights(source.adapter, targets)
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
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prune `model` and write `out` (atomically) with its lineage and per-layer sparsity report.

    With `streaming` (or automatically when the checkpoint exceeds the memory budget, see
    `moeprune.streaming.use_streaming`) one decoder layer is in memory at a time and each pruned layer is
    written to `out` as soon as it is done; the result is the same as in memory.
    """
    start = time.perf_counter()
    out = claim_output(out, "prune-unstructured", inputs=[model, calib], overwrite=overwrite)
    if method == "none":
        return _copy(model, out, start)
    spec = get_unstructured_method(method)
    pattern = None if nm is None else parse_nm(nm, "--nm")
    _check_arguments(spec, sparsity, total_sparsity, pattern, owl, calib, targets)
    source, streamed = _open(model, streaming, resolve_device(device))
    if pattern:
        rate = 1.0 - pattern[0] / pattern[1]
    else:
        rate = _rate(model, source, streamed, sparsity, total_sparsity, targets)
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
        parent_model=None if streamed else source.model,
        calibration=calib,
    )
    if streamed and not record["base_stats"]:
        record["base_stats"] = _original_stats(source, streamed)
    batches = _batches(calib, batch_size) if (spec.needs_inputs or owl) else []
    with atomic_dir(out) as tmp:
        if streamed:
            writer = StreamingWriter(source, tmp)
            report = prune_model(source, batches, settings, on_done=writer.write_block)
            writer.finish(model)
        else:
            report = prune_model(source, batches, settings)
            save_model_dir(source.model, model, tmp)
        record["params"]["layer_sparsities"] = [round(s, 6) for s in settings.layer_sparsities]
        summary = _summary(method, rate, report, streamed, start)
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
