"""Structural expert removal: slice routers and stacked experts, update every cached expert count.

A stale cached count crashes `grouped_mm` or silently misroutes under `eager`, and expert ids with
gaps are compacted on load, so removal always rewrites contiguous tensors and every count
(docs/transformers-notes.md, "Removing experts so that stock transformers loads the result").
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from moeprune.arch.adapter import MoEAdapter, MoELayer, get_adapter
from moeprune.arch.families import get_family
from moeprune.errors import MoepruneError

_COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts")
_TOP_K_ATTRS = ("top_k", "num_experts_per_tok")


def validate_keep_sets(adapter: MoEAdapter, keep: dict[int, list[int]]) -> dict[int, list[int]]:
    """Check keep-sets against the model and return them complete (every MoE layer), sorted.

    Layers not named keep all their experts. Raises MoepruneError for an unknown layer, a duplicate
    or out-of-range index, an empty set, different counts per layer, or a broken group constraint.
    """
    moe = set(adapter.moe_indices)
    unknown = sorted(set(keep) - moe)
    if unknown:
        raise MoepruneError(f"keep-set names layer(s) {unknown} that are not MoE layers; MoE layers: {sorted(moe)}")
    complete = {}
    for layer in adapter.layers:
        indices = [int(i) for i in keep.get(layer.index, range(layer.num_experts))]
        if len(set(indices)) != len(indices):
            raise MoepruneError(f"layer {layer.index}: duplicate expert indices in keep-set {indices}")
        bad = [i for i in indices if not 0 <= i < layer.num_experts]
        if bad:
            raise MoepruneError(f"layer {layer.index}: expert indices {bad} out of range [0, {layer.num_experts - 1}]")
        if not indices:
            raise MoepruneError(f"layer {layer.index}: empty keep-set; keep at least one expert")
        complete[layer.index] = sorted(indices)
    counts = {len(v) for v in complete.values()}
    if len(counts) > 1:
        per_layer = {i: len(v) for i, v in complete.items()}
        raise MoepruneError(
            f"keep-sets have different sizes per layer {per_layer}; stock transformers needs one expert count "
            "for every layer, so keep the same number in each layer"
        )
    if adapter.family.group_routing(adapter.config):
        for layer in adapter.layers:
            _check_groups(adapter, layer, complete[layer.index])
    return complete


def _check_groups(adapter: MoEAdapter, layer: MoELayer, kept: list[int]) -> None:
    config = adapter.config
    n_group = int(getattr(config, "n_group", 1) or 1)
    size = layer.num_experts // n_group
    per_group = [sum(1 for i in kept if i // size == g) for g in range(n_group)]
    if len(set(per_group)) != 1:
        raise MoepruneError(
            f"layer {layer.index}: {adapter.family.name} routes by groups of {size} experts (n_group={n_group}); "
            f"the keep-set keeps {per_group} per group, but must keep the same number in every group"
        )
    if per_group[0] < adapter.family.min_per_group:
        raise MoepruneError(
            f"layer {layer.index}: {adapter.family.name} needs at least {adapter.family.min_per_group} kept "
            f"experts per group, the keep-set keeps {per_group[0]}"
        )
    reachable = per_group[0] * int(getattr(config, "topk_group", n_group) or n_group)
    if min(layer.top_k, len(kept)) > reachable:
        raise MoepruneError(
            f"layer {layer.index}: top_k={layer.top_k} but only {reachable} experts are reachable in "
            f"topk_group={config.topk_group} groups of {per_group[0]}; keep more experts per group"
        )


def _per_expert_slots(layer: MoELayer) -> list[tuple[nn.Module, str, int, bool]]:
    """(module, tensor name, expert dimension, has the extra router rows) of every stacked expert tensor and
    router tensor of `layer`."""
    slots = []
    count = layer.num_experts
    extended = count + layer.extra_rows
    for module in (layer.experts, *layer.router.modules()):
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            # A per-expert bias may be stored [1, E] (Ernie's correction bias); every other tensor is [E, ...].
            dim = 1 if tensor.dim() == 2 and tensor.shape[0] == 1 and tensor.shape[1] == count else 0
            if tensor.dim() > dim and tensor.shape[dim] == count:
                slots.append((module, name, dim, False))
            elif module is not layer.experts and layer.extra_rows and tensor.dim() > 0 and tensor.shape[0] == extended:
                slots.append((module, name, 0, True))  # routed rows, then the extra ones (kept)
    for name, tensor in layer.router_inputs.items():  # block-level biases the block hands its router
        slots.append((layer.block, name, 1 if tensor.dim() == 2 and tensor.shape[0] == 1 else 0, False))
    return slots


def _slice_rows(module: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    tensor = getattr(module, name)
    sliced = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
    else:
        module._buffers[name] = sliced


def _remove_in_layer(layer: MoELayer, kept: list[int]) -> None:
    old = layer.num_experts
    index = torch.tensor(kept, dtype=torch.long)
    extended = torch.tensor([*kept, *range(old, old + layer.extra_rows)], dtype=torch.long)
    for module, name, dim, has_extra in _per_expert_slots(layer):  # listed before any slicing changes the count
        _slice_rows(module, name, extended if has_extra else index, dim)
    new = len(kept)
    for module in layer.block.modules():
        for attr in _COUNT_ATTRS:
            if getattr(module, attr, None) == old and not isinstance(getattr(module, attr), torch.Tensor):
                setattr(module, attr, new)
    for module in layer.router.modules():
        for attr in layer.family.extended_count_attrs:  # counts that include the extra rows (Zaya's skip expert)
            if getattr(module, attr, None) == old + layer.extra_rows:
                setattr(module, attr, new + layer.extra_rows)
    for module in layer.router.modules():  # a Linear router, or the Linear a router wraps
        if isinstance(module, nn.Linear) and module.out_features in (old, old + layer.extra_rows):
            module.out_features = module.out_features - old + new


def merge_experts(model: nn.Module, merges: dict[int, dict[int, list[int]]]) -> None:
    """Replace expert `kept` by the mean of `members` (weights, biases and router rows), in place.

    STUN's selective reconstruction (docs/algorithms.md): `merges` maps layer -> {kept: members}, `kept` among
    `members`; a member may belong to one merge per layer. Run before `remove_experts`, which then drops
    the other members.
    """
    adapter = get_adapter(model)
    layers = {layer.index: layer for layer in adapter.layers}
    for index, groups in merges.items():
        if index not in layers:
            raise MoepruneError(f"merge names layer {index}, which is not an MoE layer; MoE layers: {sorted(layers)}")
        layer = layers[index]
        _check_merges(layer, groups)
        with torch.no_grad():
            for module, name, dim, _ in _per_expert_slots(layer):  # merged rows are routed ones
                tensor = getattr(module, name)
                for kept, members in groups.items():
                    rows = tensor.index_select(dim, torch.tensor(members, device=tensor.device))
                    tensor.select(dim, kept).copy_(rows.float().mean(dim=dim).to(tensor.dtype))


def _check_merges(layer: MoELayer, groups: dict[int, list[int]]) -> None:
    seen: set[int] = set()
    for kept, members in groups.items():
        if kept not in members or len(set(members)) != len(members):
            raise MoepruneError(
                f"layer {layer.index}: merge of expert {kept} must list it once among distinct members, got {members}"
            )
        bad = [m for m in members if not 0 <= m < layer.num_experts]
        if bad:
            raise MoepruneError(f"layer {layer.index}: merge members {bad} out of range [0, {layer.num_experts - 1}]")
        if seen & set(members):
            raise MoepruneError(f"layer {layer.index}: experts {sorted(seen & set(members))} are in two merges")
        seen |= set(members)


def _clamp_top_k(model: nn.Module, config, new_count: int, family=None) -> None:
    family = family or get_family(getattr(model.config, "model_type", ""))
    for field in family.top_k_fields if family is not None else ("num_experts_per_tok",):
        top_k = getattr(config, field, None)
        if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > new_count:
            warnings.warn(
                f"top_k={top_k} is larger than the {new_count} kept experts; top_k becomes {new_count}",
                stacklevel=3,
            )
            setattr(config, field, new_count)
    for module in model.modules():
        for attr in _TOP_K_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > new_count:
                setattr(module, attr, new_count)


def remove_experts(model: nn.Module, keep: dict[int, list[int]]) -> dict[int, list[int]]:
    """Remove every expert not in `keep` (layer index -> expert indices), in place.

    Slices dimension 0 of every stacked expert tensor and the router rows/biases with sorted keep
    indices, updates the config's count field(s) and every cached count, clamps top_k (warning).

    Returns:
        The complete, sorted keep-sets that were applied (every MoE layer).
    """
    adapter = get_adapter(model)
    complete = validate_keep_sets(adapter, keep)
    old_counts = {layer.num_experts for layer in adapter.layers}
    for layer in adapter.layers:
        _remove_in_layer(layer, complete[layer.index])
    set_expert_count(model, adapter, old_counts, len(next(iter(complete.values()))))
    return complete


def set_expert_count(model: nn.Module, adapter: MoEAdapter, old_counts: set[int], new_count: int) -> None:
    """After every layer lost experts: the config's count field(s), the model's cached counts, top_k (clamped)."""
    config = adapter.config  # the language model's (a vision-language wrapper's text_config)
    for field in adapter.family.count_fields:
        setattr(config, field, new_count)
    for attr in _COUNT_ATTRS:
        if getattr(model, attr, None) in old_counts:
            setattr(model, attr, new_count)
    _clamp_top_k(model, config, new_count, adapter.family)


def remove_experts_in_layer(layer: MoELayer, kept: list[int]) -> None:
    """Slice one MoE layer to the (validated, sorted) keep-set `kept`; `set_expert_count` finishes the model."""
    _remove_in_layer(layer, kept)


def validate_merges(adapter: MoEAdapter, merges: dict[int, dict[int, list[int]]]) -> None:
    """Check STUN merges against the model's MoE layers (what `merge_experts` checks), without reading weights."""
    layers = {layer.index: layer for layer in adapter.layers}
    for index, groups in merges.items():
        if index not in layers:
            raise MoepruneError(f"merge names layer {index}, which is not an MoE layer; MoE layers: {sorted(layers)}")
        _check_merges(layers[index], groups)
