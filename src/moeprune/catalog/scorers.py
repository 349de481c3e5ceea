"""The expert scoring methods: names, inputs, options and facts (torch-free; `moeprune.scoring` implements them).

Declared in the order help texts and README list them. Each method's `needs` names the inputs the `score`
stage must be given (`profile`: --profile, `reference`: --reference, `calibration`: --calib); its options
are the only `--option KEY=VALUE` names it accepts, typed, with their defaults.

Facts:
    cost: what one run reads or computes (README's table).
    needs_when: input -> the option that makes it needed when truthy (stun's lambda2 needs the profile).
    seeded: the keep-sets depend on `--seed` (random), so studies repeat it over seeds.
    per_layer_counts: the option under which layers keep different counts (recorded in the scores file).
    refusal: `refusal(experts, keep, options) -> reason or None`, when a run would be refused as intractable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from moeprune.catalog import Entry, Option, Registry

INPUTS = ("profile", "reference", "calibration")
SCORERS = Registry(
    "scoring method",
    needs=INPUTS,
    facts={"cost": "", "needs_when": {}, "seeded": False, "per_layer_counts": None, "refusal": None},
    listing="valid methods",
)
NAEE_MAX_COMBINATIONS = 5000
CALIBRATION_BATCH_SIZE = 8  # calibration samples per forward batch, unless a method's `batch_size` says otherwise


def naee_refusal(experts: int, keep: int, options: Mapping[str, Any] | None = None) -> str | None:
    """Why naee refuses `keep` of `experts` per layer (too many keep-sets to enumerate), or None."""
    limit = (options or {}).get("max_combinations", NAEE_MAX_COMBINATIONS)
    count = math.comb(experts, keep)
    if count <= limit:
        return None
    return f"C({experts}, {keep}) = {count:.2g} keep-sets per layer, above naee's max_combinations={limit}"


def run_needs(entry: Entry, options: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The inputs a run of `entry` with `options` needs: its `needs` plus those its options switch on."""
    values = {**entry.defaults(), **(options or {})}
    extra = tuple(need for need, option in entry.needs_when.items() if values.get(option) and need not in entry.needs)
    return entry.needs + extra


SCORERS.declare(
    "router-change",
    "Router-row norm growth during fine-tuning (Chowdhury et al., 2024)",
    needs=("reference",),
    cost="no forward pass; router rows of both models",
)
SCORERS.declare(
    "router-change-diff",
    "Router-row distance moved during fine-tuning (the variant of Chowdhury et al.)",
    needs=("reference",),
    cost="no forward pass; router rows of both models",
)
SCORERS.declare(
    "frequency",
    "Calibration tokens routed to the expert (heavy hitters, SEER-MoE)",
    needs=("profile",),
    cost="no weights read",
)
SCORERS.declare(
    "soft-frequency",
    "Summed gate weight over the calibration tokens",
    needs=("profile",),
    cost="no weights read",
)
SCORERS.declare(
    "reap",
    "Router-weighted expert activation norm (Cerebras, 2025)",
    needs=("profile",),
    cost="no weights read",
)
SCORERS.declare(
    "naee",
    "Layer-wise keep-set enumeration (Lu et al., 2024)",
    needs=("calibration",),
    options={
        "max_combinations": Option(int, NAEE_MAX_COMBINATIONS, "refuse a layer with more keep-sets than this"),
        "progressive": Option(bool, False, "score each layer on the already-pruned layers' outputs; 2 forward passes"),
        "batch_size": Option(int, CALIBRATION_BATCH_SIZE, "calibration samples per forward batch"),
    },
    cost="one forward pass plus C(E, keep) keep-set evaluations per layer",
    refusal=naee_refusal,
)
SCORERS.declare(
    "stun",
    "Router-behaviour clustering, one representative per cluster (Lee et al., 2024)",
    options={
        "lambda1": Option(float, 1.0, "weight of the router-row distance"),
        "lambda2": Option(float, 0.0, "weight of the co-activation counts; above 0 needs `--profile`"),
        "global_budget": Option(bool, False, "one threshold over all layers: per-layer counts, recorded"),
        "reconstruct": Option(
            bool, False, "clusters smaller than kappa become the mean of their members, applied by prune-experts"
        ),
        "kappa": Option(int, 3, "selective reconstruction merges clusters of 2 to kappa - 1 members"),
    },
    cost="no forward pass; router rows (and the experts of clusters with several members)",
    needs_when={"profile": "lambda2"},
    per_layer_counts="global_budget",
)
SCORERS.declare(
    "random",
    "Uniformly random keep-sets from `--seed`: the floor every method must beat",
    cost="no weights read",
    seeded=True,
)

__all__ = ["CALIBRATION_BATCH_SIZE", "INPUTS", "NAEE_MAX_COMBINATIONS", "SCORERS", "naee_refusal", "run_needs"]
