"""Stage `promote`: apply params.yaml's promotion policy to the registry (aliases champion/challenger).

    moeprune promote [--params params.yaml] [--tracking-uri URI] [--dry-run]

Prints a table of the versions (metric, retention, sparsities, pass/fail, aliases) and the decision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from moeprune.params import Params, load_params
from moeprune.registry import promote, resolve_tracking_uri
from moeprune.registry.promotion import Decision


def decision_table(decision: Decision) -> Table:
    """A rich table of one registered model's candidates and the decision."""
    title = f"{decision.model_name}: base v{decision.base_version} {decision.metric} = {decision.base_metric:.4f}"
    table = Table(title=title)
    for column in (
        "version",
        decision.metric,
        "retention",
        "expert sp.",
        "weight sp.",
        "total sp.",
        "passes",
        "aliases",
    ):
        table.add_column(column, justify="right" if column != "aliases" else "left")
    for row in decision.rows:
        marker = " <- champion" if row["version"] == decision.champion else ""
        table.add_row(
            str(row["version"]),
            fmt(row["metric"]),
            fmt(row["retention"]),
            fmt(row["expert_sparsity"]),
            fmt(row["weight_sparsity"]),
            fmt(row["total_sparsity"]),
            "yes" if row["passes"] else "no",
            ",".join(row["aliases"]) + marker,
        )
    return table


def fmt(value: float) -> str:
    """Four decimals, "-" for a missing figure."""
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def run(params: Path | None = None, tracking_uri: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Decide (and unless `dry_run`, apply) the promotion of every registered moeprune model.

    Returns:
        `{"dry_run": bool, "tracking_uri": str, "decisions": [Decision.to_dict(), ...]}`.
    """
    config = load_params(params) if params is not None else Params()
    uri = resolve_tracking_uri(tracking_uri, config.registry)
    decisions = promote(uri, config.promote, dry_run=dry_run, model_name=config.registry.model_name)
    console = Console(stderr=True)
    for decision in decisions:
        console.print(decision_table(decision))
        prefix = "[yellow]dry run, nothing changed:[/yellow] " if dry_run else ""
        console.print(f"{prefix}champion v{decision.champion}, challenger v{decision.challenger}: {decision.reason}")
    return {"dry_run": dry_run, "tracking_uri": uri, "decisions": [d.to_dict() for d in decisions]}
