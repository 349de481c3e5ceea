"""Expert-aware unstructured pruning, one decoder block at a time.

For each block: hook every targeted Linear (inputs) and the stacked experts module (the rows routed
to each expert, and each expert's `down_proj` input), run the calibration states through the block,
prune every targeted weight with its own statistics, then pass the pruned block's outputs on.
Experts that no calibration token reached fall back to magnitude (or, with `calibrate_all_experts`,
every token is pushed through every expert while collecting statistics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from moeprune.arch.adapter import MoEAdapter
from moeprune.arch.linears import layer_linear_weights
from moeprune.checkpoint import layerwise
from moeprune.pruning.masks import outlier_ratio, owl_layer_sparsities
from moeprune.pruning.unstructured import InputStats, UnstructuredMethod, owl_scores


@dataclass
class PruneSettings:
    """What to prune and how (validated by the stage)."""

    method: UnstructuredMethod
    sparsity: float
    targets: str = "all"
    nm: tuple[int, int] | None = None
    owl: bool = False
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    calibrate_all_experts: bool = False
    layer_sparsities: list[float] = field(default_factory=list)


def _expert_hook(adapter: MoEAdapter, index: int, stats: dict[str, InputStats], need_hessian: bool, all_tokens: bool):
    layer = adapter.layer(index)
    prefix = f"{index}.{layer.path.rsplit('.', 1)[-1]}.experts"
    hidden_size, inter = layer.expert_input_size, layer.intermediate_size

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        chosen = args[1] if len(args) > 1 else kwargs["top_k_index"]
        with torch.no_grad():
            for expert in range(layer.num_experts):
                rows = hidden if all_tokens else hidden[(chosen == expert).any(dim=-1)]
                if rows.shape[0] == 0:
                    continue
                key = f"{prefix}.{expert}"
                stats.setdefault(f"{key}.in", InputStats(hidden_size, need_hessian)).add(rows)
                stats.setdefault(f"{key}.down", InputStats(inter, need_hessian)).add(
                    layer.expert_intermediate(expert, rows)
                )

    return layer.experts.register_forward_pre_hook(hook, with_kwargs=True)


def collect_block_stats(
    adapter: MoEAdapter,
    index: int,
    block: nn.Module,
    inputs: layerwise.BlockInputs,
    need_hessian: bool,
    all_tokens: bool = False,
) -> dict[str, InputStats]:
    """Input statistics of every Linear of `block` and of every routed expert, keyed like `layer_linear_weights`."""
    stats: dict[str, InputStats] = {}
    handles = []
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear):
            key = f"{index}.{name}"

            def linear_hook(_m, args, key=key, width=module.in_features):
                stats.setdefault(key, InputStats(width, need_hessian)).add(args[0])

            handles.append(module.register_forward_pre_hook(linear_hook))
    if index in adapter.moe_indices:
        handles.append(_expert_hook(adapter, index, stats, need_hessian, all_tokens))
    try:
        layerwise.run_block(block, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def stats_for(name: str, stats: dict[str, InputStats]) -> InputStats | None:
    """The statistics that belong to a weight named by `layer_linear_weights`."""
    if ".experts." in name:
        key, matrix = name.rsplit(".", 1)
        return stats.get(f"{key}.{'down' if matrix == 'down_proj' else 'in'}")
    return stats.get(name)


def prune_block(
    adapter: MoEAdapter, index: int, stats: dict[str, InputStats], settings: PruneSettings, sparsity: float
) -> dict[str, Any]:
    """Prune every targeted weight of block `index` in place; return its report entry."""
    zeros = total = 0
    for name, weight in layer_linear_weights(adapter, index, settings.targets):
        with torch.no_grad():
            settings.method.prune_(weight, stats_for(name, stats), sparsity, nm=settings.nm)
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return {
        "layer": index,
        "target_sparsity": round(sparsity, 6),
        "weights": total,
        "zeros": zeros,
        "sparsity": zeros / total if total else 0.0,
    }


def block_outlier_ratio(adapter: MoEAdapter, index: int, stats: dict[str, InputStats], m: float) -> float:
    """OWL's D_l: fraction of the block's Wanda scores above m times their mean."""
    scores = [
        owl_scores(weight, stats_for(name, stats)).flatten() for name, weight in layer_linear_weights(adapter, index)
    ]
    return outlier_ratio(scores, m=m)


def owl_sparsities(
    source: layerwise.BlockSource, batches: list, settings: PruneSettings
) -> tuple[list[float], list[float]]:
    """A dense pass computing each block's outlier ratio, mapped to per-block sparsities around the target."""
    adapter = source.adapter
    ratios: list[float] = []

    def observe(index: int, block: nn.Module, inputs: layerwise.BlockInputs) -> None:
        stats = collect_block_stats(
            adapter, index, block, inputs, need_hessian=False, all_tokens=settings.calibrate_all_experts
        )
        ratios.append(block_outlier_ratio(adapter, index, stats, settings.owl_m))

    layerwise.run(source, batches, observe, description="OWL outlier ratios")
    return owl_layer_sparsities(ratios, settings.sparsity, lam=settings.owl_lambda), ratios


def prune_model(
    source: layerwise.BlockSource,
    batches: list,
    settings: PruneSettings,
    on_done: layerwise.OnDone | None = None,
) -> list[dict[str, Any]]:
    """Prune the whole model block by block; returns the per-block sparsity report.

    Args:
        source: the blocks (a `moeprune.checkpoint.ModelSource`: in memory or streamed).
        batches: calibration batches (empty for magnitude without OWL).
        settings: what to prune and how.
        on_done: called with each block once it is pruned (streaming: write it out before release).
    """
    adapter = source.adapter
    blocks = source.num_blocks
    ratios: list[float | None] = [None] * blocks
    sparsities = [settings.sparsity] * blocks
    if settings.owl:
        sparsities, ratios = owl_sparsities(source, batches, settings)
    settings.layer_sparsities = sparsities
    report: list[dict[str, Any]] = []

    def prune(index: int, block: nn.Module, inputs: layerwise.BlockInputs) -> None:
        stats: dict[str, InputStats] = {}
        if settings.method.needs_inputs:
            stats = collect_block_stats(
                adapter, index, block, inputs, settings.method.needs_hessian, settings.calibrate_all_experts
            )
        entry = prune_block(adapter, index, stats, settings, sparsities[index])
        entry["outlier_ratio"] = ratios[index]
        report.append(entry)

    if settings.method.needs_inputs:
        layerwise.run(source, batches, prune, description=f"{settings.method.name} pruning", on_done=on_done)
        return report
    for index in tqdm(range(blocks), desc=f"{settings.method.name} pruning", unit="layer", disable=None):
        with source.block(index) as block:
            prune(index, block, layerwise.BlockInputs())
            if on_done is not None:
                on_done(index, block)
    return report
