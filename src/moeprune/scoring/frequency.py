"""Heavy-hitter scores from the activation profile (as in SEER-MoE, https://arxiv.org/abs/2404.05089).

    frequency_e      = number of calibration tokens for which e is among the top_k
    soft-frequency_e = sum over calibration tokens of g_e(x) (0 where e is not chosen)

Prune the lowest. No forward pass beyond the profiling pass.

    score: {method: frequency, expert_sparsity: 0.5}
"""

from __future__ import annotations

from moeprune.scoring import implements
from moeprune.scoring.base import LayerScores, ScoringContext, profile_stat, ranked_layer_scores


@implements("frequency")
def score_frequency(ctx: ScoringContext) -> dict[int, LayerScores]:
    """Keep the experts chosen for the most calibration tokens."""
    return ranked_layer_scores(ctx, profile_stat(ctx, "frequency", "frequency"))


@implements("soft-frequency")
def score_soft_frequency(ctx: ScoringContext) -> dict[int, LayerScores]:
    """Keep the experts with the largest summed gate weight over the calibration tokens."""
    return ranked_layer_scores(ctx, profile_stat(ctx, "soft-frequency", "soft_frequency"))
