"""Stage `prune-experts`: remove the experts a scores file does not keep, save a stock-loadable model.

A shard rewrite (`moeprune.pruning.experts`): each decoder layer is read from the safetensors shards,
merged (STUN) and sliced, and written as a new shard; config and tokenizer follow with the counts
updated. Peak memory is one decoder layer. The scores file is read and checked by
`moeprune.scoring.scores_file`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from moeprune.checkpoint.source import open_model
from moeprune.outputs import atomic_dir, claim_output
from moeprune.pruning.experts import prune_experts_layerwise
from moeprune.registry.lineage import build_lineage, write_lineage, write_model_card
from moeprune.scoring.scores_file import ScoresFile, check_scores_model, keep_sets_for, read_scores


def run(model: Path, scores: Path, out: Path, force: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Remove experts per the scores file and write the pruned model directory `out` (atomically).

    `force` applies scores computed on other weights; `overwrite` replaces an `out` that is not an
    earlier prune-experts output (`moeprune.outputs.claim_output`).
    """
    start = time.perf_counter()
    out = claim_output(out, "prune-experts", inputs=[model, scores], overwrite=overwrite)
    data = read_scores(scores)
    source = open_model(model, streaming=True)
    check_scores_model(data, Path(model), force)
    adapter = source.adapter
    keep = keep_sets_for(data, adapter)
    record = build_lineage(
        stage="prune-experts", params={"method": data.method}, parent=model, parent_model=source.model, scores=scores
    )
    before = adapter.layers[0].num_experts
    merges = data.merges()
    with atomic_dir(out) as tmp:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            applied = prune_experts_layerwise(source, keep, merges, source.writer(tmp))
        notes = [str(w.message) for w in caught]
        after = len(next(iter(applied.values())))
        record["params"].update(
            expert_sparsity=1 - after / before,  # what was removed, whatever the file asked for
            scores_expert_sparsity=data.expert_sparsity,
            keep={str(k): v for k, v in applied.items()},
        )
        if merges:
            record["params"]["merge"] = {
                str(layer): {str(k): v for k, v in groups.items()} for layer, groups in merges.items()
            }
        record["notes"] = notes
        write_lineage(tmp, record)
        write_model_card(tmp, record, _card_summary(data, adapter, before, after, notes, merges))
    return {
        "out": str(out),
        "experts_before": before,
        "experts_after": after,
        "notes": notes,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _card_summary(
    data: ScoresFile, adapter, before: int, after: int, notes: list[str], merges: dict[int, dict]
) -> list[str]:
    summary = [
        f"Expert pruning with `{data.method}`: {before} -> {after} routed experts in each of "
        f"{len(adapter.layers)} MoE layers (expert sparsity {1 - after / before:.2f}).",
    ]
    merged = sum(len(groups) for groups in merges.values())
    if merged:
        summary.append(f"{merged} kept experts are the mean of their cluster (STUN's selective reconstruction).")
    if not adapter.renormalises:
        summary.append(
            f"Note: the {adapter.family.name} gate does not renormalise over the chosen experts, so outputs "
            "shift slightly even for tokens that never used a removed expert (the softmax loses terms)."
        )
    return summary + [f"Warning: {note}" for note in notes]
