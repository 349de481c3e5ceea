"""The Linear weights that unstructured pruning targets and sparsity accounting counts.

docs/algorithms.md: every Linear weight of the decoder blocks (attention projections, dense MLPs, routed
expert matrices, shared experts), never embeddings, the LM head, norms, routers or shared-expert gates.
Routed experts appear as one `[out, in]` view per expert and matrix, aliasing the stacked parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from moeprune.arch.adapter import MoEAdapter, get_adapter

_GATE_NAMES = ("shared_expert_gate",)


def _router_ids(adapter: MoEAdapter) -> set[int]:
    ids = set()
    for layer in adapter.layers:
        ids.update(id(m) for m in layer.router.modules())
        for name in _GATE_NAMES:
            gate = getattr(layer.block, name, None)
            if gate is not None:
                ids.add(id(gate))
    return ids


def layer_linear_weights(adapter: MoEAdapter, index: int, targets: str = "all") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, weight `[out, in]`) of decoder layer `index`; `targets="experts"` keeps routed experts only."""
    block = adapter.decoder_layers[index]
    skip = _router_ids(adapter)
    moe = {layer.index: layer for layer in adapter.layers}
    experts_module = moe[index].experts if index in moe else None
    if targets == "all":
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear) and id(module) not in skip:
                yield f"{index}.{name}", module.weight
    if experts_module is not None:
        layer = moe[index]
        for expert in range(layer.num_experts):
            for matrix, view in layer.expert_weights(expert).items():
                yield f"{index}.{layer.path.rsplit('.', 1)[-1]}.experts.{expert}.{matrix}", view


def prunable_weights(adapter: MoEAdapter, targets: str = "all") -> Iterator[tuple[str, torch.Tensor]]:
    """Every targeted Linear weight of the model, decoder layer by decoder layer."""
    for index in range(len(adapter.decoder_layers)):
        yield from layer_linear_weights(adapter, index, targets)


def targeted_count(adapter: MoEAdapter, targets: str = "all") -> int:
    """The number of targeted weights, from shapes only (meta tensors count: nothing is read)."""
    return sum(weight.numel() for _, weight in prunable_weights(adapter, targets))


def nonzero_count(weights: Iterator[tuple[str, torch.Tensor]]) -> int:
    """The nonzero entries of `(name, weight)` pairs, e.g. `layer_linear_weights(...)`."""
    with torch.no_grad():
        return sum(int(torch.count_nonzero(weight)) for _, weight in weights)


def count_weights(adapter: MoEAdapter, targets: str = "all") -> tuple[int, int]:
    """(number of targeted weights, number of them that are nonzero)."""
    return targeted_count(adapter, targets), nonzero_count(prunable_weights(adapter, targets))


def base_stats(model: nn.Module, adapter: MoEAdapter | None = None) -> dict[str, Any]:
    """Expert counts and targeted-weight counts of an ORIGINAL model, for the lineage's sparsity accounting.

    Counts come from shapes only, so a model whose weights are still on the meta device (streaming)
    gives the same record as a loaded one.
    """
    adapter = adapter or get_adapter(model)
    return {
        "family": adapter.family.name,
        "moe_layers": adapter.moe_indices,
        "experts_per_layer": adapter.layers[0].num_experts,
        "routed_experts": sum(layer.num_experts for layer in adapter.layers),
        "top_k": adapter.layers[0].top_k,
        "prunable_params": targeted_count(adapter),
        "params": sum(p.numel() for p in model.parameters()),
    }
