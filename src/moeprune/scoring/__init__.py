"""Expert scoring methods, one file per method, found through the `SCORERS` registry.

    from moeprune.scoring import SCORERS, ScoringContext
    scorer = SCORERS.get("reap")            # MoepruneError listing the valid names if unknown
    layers = scorer(ScoringContext(model, adapter, expert_sparsity=0.5, profile=profile, method="reap"))
    layers[3].scores, layers[3].keep        # per expert (higher = keep), sorted kept indices

A method is declared, torch-free, in `moeprune.catalog.scorers` (name, `needs`, options with types and
defaults, facts) and implemented here by a function `score(ctx: ScoringContext) -> dict[layer index,
LayerScores]` attached with `@SCORERS.implements("name")`. `needs` names the inputs the stage must supply
("profile", "reference", "calibration"), so a missing one fails before the model is loaded; the function
reads its options with `ctx.option(name)`, which falls back to the declared default.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from moeprune.catalog import Entry
from moeprune.catalog.scorers import INPUTS, SCORERS
from moeprune.scoring.base import LayerScores, ScoringContext, keep_count, select_keep

ScoreFn = Callable[[ScoringContext], dict[int, LayerScores]]
Scorer = Entry  # a registered scoring method: name, needs, options, facts and the attached function


def implements(name: str) -> Callable[[ScoreFn], ScoreFn]:
    """Attach `fn` to the declared scoring method `name`; the context it gets knows its method (`ctx.option`)."""

    def decorator(fn: ScoreFn) -> ScoreFn:
        @functools.wraps(fn)
        def run(ctx: ScoringContext) -> dict[int, LayerScores]:
            ctx.method = name
            return fn(ctx)

        SCORERS.implements(name)(run)
        return fn

    return decorator


# Importing the method modules attaches their implementations.
from moeprune.scoring import frequency, naee, random_scores, reap, router_change, stun  # noqa: E402,F401

__all__ = ["INPUTS", "SCORERS", "implements", "LayerScores", "Scorer", "ScoringContext", "keep_count", "select_keep"]
