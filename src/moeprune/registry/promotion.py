"""The promotion policy (docs/design.md, "Promotion policy"): which registered version carries `champion`.

A candidate passes if `metric >= min_retention * base metric`. Passing candidates are ranked by the
policy's objective (default: highest total_sparsity, then highest metric). `champion` moves only to a
candidate that ranks strictly better than the current champion (a champion that no longer passes ranks
below every passing candidate); `challenger` marks the best passing candidate that is not champion.

`decide_promotion` is pure (no MLflow); `registry.promote` reads the versions and applies the decision.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from moeprune.errors import MoepruneError
from moeprune.params import PromoteSection

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass
class Candidate:
    """One registered version as the policy sees it.

    Attributes:
        version: the registry's version number.
        role: "base" for the unpruned model, anything else for a pruned one.
        values: numeric figures (metrics and sparsities) read from the version's tags.
        aliases: the aliases the version carries now.
    """

    version: int
    role: str
    values: dict[str, float]
    aliases: list[str] = field(default_factory=list)


@dataclass
class Decision:
    """What the policy decided, with the figures that justify it (stored as tags when applied)."""

    model_name: str
    metric: str
    min_retention: float
    base_version: int
    base_metric: float
    champion: int | None
    previous_champion: int | None
    challenger: int | None
    changed: bool
    reason: str
    rows: list[dict[str, Any]]
    time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


def objective_key(candidate: Candidate, policy: PromoteSection) -> tuple[float, ...]:
    """The ranking key: one number per objective entry, larger is better, missing values rank last."""
    key = []
    for entry in policy.objective:
        name = entry.removeprefix("-")
        name = policy.metric if name == "metric" else name
        value = candidate.values.get(name, math.nan)
        if math.isnan(value):
            key.append(-math.inf)
        else:
            key.append(-value if entry.startswith("-") else value)
    return tuple(key)


def find_base(versions: list[Candidate], policy: PromoteSection) -> Candidate:
    """The version tagged role=base (the lowest if several); it must carry the policy metric."""
    bases = sorted((v for v in versions if v.role == "base"), key=lambda v: v.version)
    if not bases:
        raise MoepruneError("no version tagged role=base is registered; register the base model with its metrics first")
    base = bases[0]
    if policy.metric not in base.values:
        raise MoepruneError(
            f"base version {base.version} has no {policy.metric!r} metric; register the base model with "
            f"`moeprune register --model BASE --metrics BASE_METRICS.json` or change promote.metric"
        )
    return base


def candidate_row(candidate: Candidate, policy: PromoteSection, base_metric: float) -> dict[str, Any]:
    """The figures shown for one candidate: metric, retention, sparsities and whether it passes."""
    metric = candidate.values.get(policy.metric, math.nan)
    retention = metric / base_metric if base_metric else math.nan
    passes = not math.isnan(metric) and metric >= policy.min_retention * base_metric
    return {
        "version": candidate.version,
        "metric": metric,
        "retention": retention,
        "total_sparsity": candidate.values.get("total_sparsity", math.nan),
        "expert_sparsity": candidate.values.get("expert_sparsity", math.nan),
        "weight_sparsity": candidate.values.get("weight_sparsity", math.nan),
        "passes": passes,
        "aliases": sorted(candidate.aliases),
    }


def decide_promotion(versions: list[Candidate], policy: PromoteSection, model_name: str = "") -> Decision:
    """Apply the policy to the registered versions of one model.

    Args:
        versions: every version of the registered model, the base included.
        policy: params.yaml's `promote` section.
        model_name: the registered model's name (for the record).

    Returns:
        The decision: the champion after it, the previous one, the challenger and the reason.

    Raises:
        MoepruneError: no base version, or the base lacks the policy metric.
    """
    base = find_base(versions, policy)
    base_metric = base.values[policy.metric]
    candidates = [v for v in versions if v.role != "base"]
    rows = [candidate_row(c, policy, base_metric) for c in candidates]
    passing = [c for c, row in zip(candidates, rows, strict=True) if row["passes"]]
    ranked = sorted(passing, key=lambda c: (objective_key(c, policy), -c.version), reverse=True)
    current = next((v for v in versions if CHAMPION in v.aliases), None)
    current_passes = current is not None and any(c.version == current.version for c in passing)
    champion, reason = choose_champion(ranked, current, current_passes, policy)
    challenger = next((c.version for c in ranked if c.version != champion), None)
    return Decision(
        model_name=model_name,
        metric=policy.metric,
        min_retention=policy.min_retention,
        base_version=base.version,
        base_metric=base_metric,
        champion=champion,
        previous_champion=current.version if current else None,
        challenger=challenger,
        changed=champion != (current.version if current else None),
        reason=reason,
        rows=rows,
    )


def choose_champion(
    ranked: list[Candidate], current: Candidate | None, current_passes: bool, policy: PromoteSection
) -> tuple[int | None, str]:
    """The champion after the decision and a one-line reason."""
    threshold = f"{policy.metric} >= {policy.min_retention:g} x base"
    if not ranked:
        kept = f"champion stays v{current.version}" if current else "no champion"
        return (current.version if current else None), f"no candidate passes {threshold}; {kept}"
    best = ranked[0]
    objective = ", ".join(policy.objective)
    if current is None:
        return best.version, f"v{best.version} is the best passing candidate ({threshold}; by {objective})"
    if not current_passes:
        return (
            best.version,
            f"champion v{current.version} no longer passes {threshold}; v{best.version} replaces it",
        )
    if best.version == current.version:
        return (
            current.version,
            f"champion v{current.version} is still the best passing candidate (by {objective})",
        )
    if objective_key(best, policy) > objective_key(current, policy):
        return (
            best.version,
            f"v{best.version} beats champion v{current.version} (by {objective}) and passes {threshold}",
        )
    return current.version, f"no passing candidate beats champion v{current.version} (by {objective})"


def apply_decision(client: Any, decision: Decision) -> None:
    """Move the aliases and write the decision tags through an `mlflow.MlflowClient`."""
    name = decision.model_name
    if decision.champion is not None:
        client.set_registered_model_alias(name, CHAMPION, str(decision.champion))
    if decision.challenger is not None:
        client.set_registered_model_alias(name, CHALLENGER, str(decision.challenger))
    else:
        remove_alias(client, name, CHALLENGER)
    tags = decision_tags(decision)
    for key, value in tags.items():
        client.set_registered_model_tag(name, key, value)
    if decision.champion is not None:
        for key, value in tags.items():
            client.set_model_version_tag(name, str(decision.champion), key, value)


def remove_alias(client: Any, name: str, alias: str) -> None:
    """Delete an alias when it exists."""
    aliases = getattr(client.get_registered_model(name), "aliases", {}) or {}
    if alias in aliases:
        client.delete_registered_model_alias(name, alias)


def decision_tags(decision: Decision) -> dict[str, str]:
    """The decision as string tags: reason, figures, time."""
    champion_row = next((r for r in decision.rows if r["version"] == decision.champion), None)
    tags = {
        "promotion.reason": decision.reason,
        "promotion.time": decision.time,
        "promotion.metric": decision.metric,
        "promotion.min_retention": f"{decision.min_retention:g}",
        "promotion.base_version": str(decision.base_version),
        "promotion.base_metric": f"{decision.base_metric:.6g}",
        "promotion.champion": str(decision.champion),
        "promotion.previous_champion": str(decision.previous_champion),
        "promotion.challenger": str(decision.challenger),
    }
    if champion_row:
        tags["promotion.champion_metric"] = f"{champion_row['metric']:.6g}"
        tags["promotion.champion_retention"] = f"{champion_row['retention']:.4f}"
        tags["promotion.champion_total_sparsity"] = f"{champion_row['total_sparsity']:.4f}"
    return tags
