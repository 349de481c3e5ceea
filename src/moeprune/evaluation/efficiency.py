"""Sparsity and size figures of a model directory (docs/algorithms.md, "Sparsity accounting").

"Targeted weights" are the Linear weights of the decoder blocks that unstructured pruning targets
(`moeprune.arch.linears`: attention, dense MLPs, routed and shared experts; no routers, embeddings or
LM head). The base is the ORIGINAL model of the lineage (`base_stats` in `moeprune.json`); a directory
without a lineage record is its own base.

    expert_sparsity = 1 - routed experts of this model / routed experts of the base
    weight_sparsity = zero targeted weights of this model / targeted weights of this model
    total_sparsity  = 1 - nonzero targeted weights of this model / targeted weights of the base
                      (removed experts count as zeros)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

_BASE_KEYS = ("routed_experts", "prunable_params")


def size_on_disk(model_dir: str | Path) -> int:
    """Bytes of the model's safetensors files."""
    return sum(path.stat().st_size for path in Path(model_dir).glob("*.safetensors"))


def base_statistics(model_dir: str | Path, own: dict[str, int]) -> dict[str, int]:
    """`routed_experts` and `prunable_params` of the base model: from the lineage, else the model's own."""
    from moeprune.registry.lineage import read_lineage

    record = read_lineage(model_dir)
    if record is None:
        return own
    stats = record.get("base_stats") or {}
    if not all(isinstance(stats.get(key), int) and stats[key] > 0 for key in _BASE_KEYS):
        warnings.warn(
            f"{model_dir}/moeprune.json has no usable base_stats; sparsity is relative to the model itself",
            stacklevel=2,
        )
        return own
    return {key: int(stats[key]) for key in _BASE_KEYS}


def sparsity_from_counts(
    routed_experts: int, targeted: int, nonzero_targeted: int, base: dict[str, int]
) -> dict[str, float]:
    """The three sparsity figures from this model's counts and the base's (see the module docstring)."""
    return {
        "expert_sparsity": 1.0 - routed_experts / base["routed_experts"],
        "weight_sparsity": (targeted - nonzero_targeted) / targeted if targeted else 0.0,
        "total_sparsity": 1.0 - nonzero_targeted / base["prunable_params"],
    }


def sparsity_figures(model_dir: str | Path, streaming: bool = False) -> dict[str, Any]:
    """The sparsity and size figures of the model in `model_dir` (read one layer at a time when streamed).

    Returns:
        Flat keys: `expert_sparsity`, `weight_sparsity`, `total_sparsity`, `params`, `nonzero_params`,
        `active_params_per_token`, `size_bytes`, `experts_per_layer` (list, one count per MoE layer),
        plus `routed_experts`, `targeted_params` and `nonzero_targeted_params`.
    """
    from moeprune.checkpoint.source import open_model

    source = open_model(model_dir, streaming)
    census = source.census()
    adapter = source.adapter
    routed_experts = sum(layer.num_experts for layer in adapter.layers)
    targeted, nonzero_targeted = census["targeted"], census["nonzero_targeted"]
    base = base_statistics(model_dir, {"routed_experts": routed_experts, "prunable_params": targeted})
    return {
        **sparsity_from_counts(routed_experts, targeted, nonzero_targeted, base),
        "params": census["params"],
        "nonzero_params": census["nonzero_params"],
        "active_params_per_token": adapter.active_params_per_token(),
        "size_bytes": size_on_disk(model_dir),
        "experts_per_layer": [layer.num_experts for layer in adapter.layers],
        "routed_experts": routed_experts,
        "targeted_params": targeted,
        "nonzero_targeted_params": nonzero_targeted,
    }
