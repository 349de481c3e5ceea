"""REAP: router-weighted expert activation pruning (Cerebras 2025, https://arxiv.org/abs/2510.13999).

    reap_e = mean over the tokens routed to e of g_e(x) * ||f_e(x)||_2     (0 if e is never routed)

The statistic is accumulated by the profiling pass (`profile.safetensors`, `layers.{l}.reap`); prune the
lowest. Reported: Qwen3-30B-A3B keeps 98.9% of GSM8K at 25% and about 99.8% at 50% expert pruning.

    score: {method: reap, expert_sparsity: 0.25}
"""

from __future__ import annotations

from moeprune.scoring import implements
from moeprune.scoring.base import LayerScores, ScoringContext, profile_stat, ranked_layer_scores


@implements("reap")
def score_reap(ctx: ScoringContext) -> dict[int, LayerScores]:
    """Keep the experts whose gate-weighted output norm is largest on the tokens they receive."""
    return ranked_layer_scores(ctx, profile_stat(ctx, "reap", "reap"))
