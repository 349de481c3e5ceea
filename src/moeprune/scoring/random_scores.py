"""Random expert pruning: a uniformly random keep-set per layer from a seed, the floor every method must beat.

Scores are uniform draws from `torch.Generator().manual_seed(seed)`, one vector per MoE layer in layer
order; the keep-set is the top scores (within each routing group for DeepSeek), so the same seed gives
the same keep-sets.

    score: {method: random, expert_sparsity: 0.5, seed: 0}

The module is `random_scores`, not `random`, so that it never shadows the standard library's `random`.
"""

from __future__ import annotations

import torch

from moeprune.scoring import implements
from moeprune.scoring.base import LayerScores, ScoringContext, ranked_layer_scores


@implements("random")
def score_random(ctx: ScoringContext) -> dict[int, LayerScores]:
    """Uniform random scores per expert, reproducible for `ctx.seed`."""
    generator = torch.Generator().manual_seed(int(ctx.seed))
    scores = {
        layer.index: torch.rand(layer.num_experts, generator=generator, dtype=torch.float64)
        for layer in ctx.adapter.layers
    }
    return ranked_layer_scores(ctx, scores)
