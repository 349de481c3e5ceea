"""Expert pruning as a shard rewrite: one decoder layer read, merged, sliced and written at a time.

The same slicing as `arch.removal.remove_experts` (so the result is tensor-for-tensor the in-memory
one), applied to a `ModelSource` layer by layer: with a streamed source peak memory is one decoder
layer whatever the checkpoint's size; STUN merges are applied to a layer while it is in memory.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from moeprune.arch.removal import (
    merge_experts,
    remove_experts_in_layer,
    set_expert_count,
    validate_keep_sets,
    validate_merges,
)
from moeprune.checkpoint.source import ModelSource, ModelWriter


def prune_experts_layerwise(
    source: ModelSource,
    keep: dict[int, list[int]],
    merges: dict[int, dict[int, list[int]]],
    writer: ModelWriter,
) -> dict[int, list[int]]:
    """Remove every expert not in `keep` (after averaging `merges`), writing each layer through `writer`.

    Returns:
        The complete, sorted keep-sets that were applied (every MoE layer).

    Raises:
        MoepruneError: bad keep-sets or merges, before any layer is read.
    """
    adapter = source.adapter
    complete = validate_keep_sets(adapter, keep)
    validate_merges(adapter, merges)
    old_counts = {layer.num_experts for layer in adapter.layers}
    moe = {layer.index: layer for layer in adapter.layers}
    for index in tqdm(range(source.num_blocks), desc="prune experts", unit="layer", disable=None):
        with source.block(index) as block:
            if index in merges:
                merge_experts(source.model, {index: merges[index]})
            if index in moe:
                remove_experts_in_layer(moe[index], complete[index])
            writer.write_block(index, block)
    set_expert_count(source.model, adapter, old_counts, len(next(iter(complete.values()))))
    writer.finish()
    return complete
