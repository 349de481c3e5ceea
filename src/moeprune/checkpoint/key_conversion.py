"""transformers' checkpoint conversion mapping, applied one decoder layer at a time.

transformers 5 stores routed experts fused (`experts.gate_up_proj [E, 2I, H]`, `experts.down_proj
[E, H, I]`) but `save_pretrained` writes, and most checkpoints hold, legacy per-expert keys (Mixtral
`block_sparse_moe.experts.{e}.w1/w3/w2.weight`, Qwen / OLMoE / DeepSeek
`mlp.experts.{e}.gate_proj/up_proj/down_proj.weight`). `KeyConversion` reuses the family's own
`WeightRenaming` / `WeightConverter` list (`transformers.conversion_mapping`) on any subset of keys:
names are mapped by `rename_source_key`, tensors by the converters' operations, and saving reverses
them with `revert_weight_conversion`. Two changes keep memory at about one layer: the common stacking
chain runs into a preallocated tensor, and the reverse split returns views instead of copies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    Chunk,
    Concatenate,
    MergeModulelist,
    PrefixChange,
    WeightConverter,
    WeightRenaming,
    dot_natural_key,
    rename_source_key,
    revert_weight_conversion,
)


def _load(item: torch.Tensor | Callable[[], torch.Tensor]) -> torch.Tensor:
    return item if isinstance(item, torch.Tensor) else item()


def stack_in_place(mapping: Any) -> torch.Tensor | None:
    """Run `MergeModulelist(0)` [+ `Concatenate(1)`] into one preallocated tensor; None for other chains.

    The result equals the operations' (`torch.stack` per source pattern, then `torch.cat` along dim 1 in
    source-pattern order), but only one source matrix is in memory besides the output.
    """
    ops = getattr(mapping, "operations", None) or []
    chain = [type(op) for op in ops]
    lists = [mapping.collected_tensors[p] for p in mapping.source_patterns if p in mapping.collected_tensors]
    eligible = (
        (
            (chain == [MergeModulelist] and len(lists) == 1)
            or (chain == [MergeModulelist, Concatenate] and ops[1].dim == 1 and lists)
        )
        and ops[0].dim == 0
        and mapping.quantization_operation is None
        and len({len(items) for items in lists}) == 1
    )
    if not eligible:
        return None
    mapping.collected_tensors.clear()
    heads = [_load(items[0]) for items in lists]
    sizes = [head.shape[0] for head in heads]
    out = torch.empty((len(lists[0]), sum(sizes), *heads[0].shape[1:]), dtype=heads[0].dtype)
    offset = 0
    for head, size, items in zip(heads, sizes, lists, strict=True):
        out[0, offset : offset + size] = head
        for expert in range(1, len(items)):
            out[expert, offset : offset + size] = _load(items[expert])
            items[expert] = None  # free it before the next read
        offset += size
    return out


class KeyConversion:
    """transformers' checkpoint conversion mapping, applied to any subset of keys (one layer at a time)."""

    def __init__(self, model: nn.Module):
        self.model = model
        mapping = get_model_conversion_mapping(model, add_legacy=True)
        self.renamings = [entry for entry in mapping if isinstance(entry, WeightRenaming)]
        self.converters = [entry for entry in mapping if isinstance(entry, WeightConverter)]
        self.by_pattern = {pattern: entry for entry in self.converters for pattern in entry.source_patterns}
        self.meta_state = model.state_dict()

    def target(self, key: str) -> tuple[str, str | None]:
        """(the module state-dict name a checkpoint key loads into, the converter pattern it matched)."""
        renamed, pattern = rename_source_key(
            key, self.renamings, self.converters, self.model.base_model_prefix, self.meta_state
        )
        if renamed not in self.meta_state and key in self.meta_state:
            return key, None
        return renamed, pattern

    def convert(self, sources: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Checkpoint tensors -> module tensors (renamed, per-expert matrices stacked), as `from_pretrained` does.

        `sources` maps checkpoint keys to tensors or to zero-argument loaders; a loader is called only when
        its converter runs. The stacking of per-expert matrices (`MergeModulelist` + `Concatenate`) is done
        into one preallocated tensor (`stack_in_place`), so a layer is not held twice while it is fused.
        """
        mappings: dict[str, Any] = {}
        for key in sorted(sources, key=dot_natural_key):  # experts in numeric order before stacking
            target, pattern = self.target(key)
            if pattern is not None:
                mapping = mappings.setdefault(target, copy.deepcopy(self.by_pattern[pattern]))
            else:
                mapping = mappings.setdefault(target, WeightRenaming(key, target))
                pattern = key
            mapping.add_tensor(target, key, pattern, sources.pop(key))
        converted = {}
        for first_name in list(mappings):
            mapping = mappings.pop(first_name)
            stacked = stack_in_place(mapping)
            if stacked is not None:
                converted[first_name] = stacked
                continue
            for name, value in mapping.convert(first_name, model=self.model, config=self.model.config).items():
                converted[name] = value[0] if isinstance(value, list) else value
        return converted

    def revert(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Module tensors -> the legacy checkpoint names and layout `save_pretrained` writes.

        transformers' own reversal, except that splitting `gate_up_proj` back into per-expert `w1` / `w3`
        returns views instead of copies (the writer reads each view once), so a layer is not held twice.
        """
        if getattr(self.model, "_weight_conversions", None) is None:  # what revert_weight_conversion reverses
            mapping = get_model_conversion_mapping(self.model, add_legacy=False)
            saving = [transform for transform in mapping if not isinstance(transform, PrefixChange)]
            for transform in saving:
                if isinstance(transform, WeightConverter):
                    transform.operations = [
                        _ViewConcatenate(op.dim, op.num_shards_attribute) if type(op) is Concatenate else op
                        for op in transform.operations
                    ]
            self.model._weight_conversions = saving
        return revert_weight_conversion(self.model, tensors)


class _ViewChunk(Chunk):
    """`Chunk` without the `.contiguous()` copy (the reverse of `Concatenate` when saving)."""

    def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
        tensors = next(iter(input_dict.values()))
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        targets = self.get_target_patterns(target_patterns, **kwargs)
        return dict(zip(targets, torch.chunk(tensor, len(targets), dim=self.dim), strict=True))


class _ViewConcatenate(Concatenate):
    """`Concatenate` whose reverse splits into views."""

    @property
    def reverse_op(self) -> _ViewChunk:
        return _ViewChunk(self.dim, self.num_shards_attribute)
