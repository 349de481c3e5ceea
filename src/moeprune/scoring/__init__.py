"""Expert scoring methods, one file per method, found through the `SCORERS` registry.

    from moeprune.scoring import SCORERS, ScoringContext
    scorer = SCORERS.get("reap")            # MoepruneError listing the valid names if unknown
    layers = scorer(ScoringContext(model, adapter, expert_sparsity=0.5, profile=profile))
    layers[3].scores, layers[3].keep        # per expert (higher = keep), sorted kept indices

A method is a function `score(ctx: ScoringContext) -> dict[layer index, LayerScores]` registered with
`@SCORERS.register("name", needs=(...))`; `needs` names the inputs the stage must supply
("profile", "reference", "calibration"), so a missing one fails before the model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moeprune.errors import MoepruneError
from moeprune.scoring.base import LayerScores, ScoringContext, keep_count, select_keep

ScoreFn = Callable[[ScoringContext], dict[int, LayerScores]]
INPUTS = ("profile", "reference", "calibration")


@dataclass(frozen=True)
class Scorer:
    """A registered method: its name, what it needs, and the function."""

    name: str
    fn: ScoreFn
    needs: tuple[str, ...] = ()

    def __call__(self, ctx: ScoringContext) -> dict[int, LayerScores]:
        return self.fn(ctx)


class Registry:
    """Name -> Scorer; `register` is a decorator, `get` fails with the list of valid names."""

    def __init__(self) -> None:
        self._entries: dict[str, Scorer] = {}

    def register(self, name: str, needs: tuple[str, ...] = ()) -> Callable[[ScoreFn], ScoreFn]:
        unknown = set(needs) - set(INPUTS)
        if unknown:
            raise ValueError(f"unknown inputs {sorted(unknown)} for scorer {name!r}; valid: {INPUTS}")

        def decorator(fn: ScoreFn) -> ScoreFn:
            if name in self._entries:
                raise ValueError(f"scorer {name!r} is registered twice")
            self._entries[name] = Scorer(name, fn, tuple(needs))
            return fn

        return decorator

    def get(self, name: str) -> Scorer:
        if name not in self._entries:
            raise MoepruneError(f"unknown scoring method '{name}'; valid methods: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


SCORERS = Registry()

# Importing the method modules registers them.
from moeprune.scoring import frequency, naee, random_scores, reap, router_change, stun  # noqa: E402,F401

__all__ = ["SCORERS", "LayerScores", "Registry", "Scorer", "ScoringContext", "keep_count", "select_keep"]
