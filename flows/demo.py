"""`make demo`: both embedded testbeds through the whole pipeline, registered in MLflow, then promoted.

    python -m flows.demo            # what `make demo` runs

The LM chain (params.yaml) and the vision chain (pipelines/vision/params.yaml) each run as the
`pipeline` flow (DVC stages as tasks: unchanged stages are skipped on a rerun, the base and the pruned
model are registered), then the sweep grid of their params.yaml (`sweep:` section, one DVC experiment
and one registered version per point), then the `promote` flow applies the policy. The table of
registered versions is printed at the end with where the MLflow and Prefect UIs are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.pipeline import pipeline
from flows.promote import promote
from flows.sweep import sweep
from moeprune.params import load_params

CHAINS = {"lm": ".", "vision": "pipelines/vision"}


def versions_table(tracking_uri: str | None) -> list[dict[str, Any]]:
    """Every registered moeprune version with its metrics, sparsities, size and aliases."""
    from moeprune.registry import mlflow_client, moeprune_models, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    rows = []
    for name in moeprune_models(client):
        for version in client.search_model_versions(f"name = '{name}'"):
            tags = version.tags or {}
            aliases = [
                a for a, v in client.get_registered_model(name).aliases.items() if str(v) == str(version.version)
            ]
            rows.append({"model": name, "version": int(version.version), "alias": ",".join(aliases), **tags})
    return sorted(rows, key=lambda row: (row["model"], row["version"]))


METRICS = ("gsm8k.exact_match_strict", "imagenet.top1")


def _number(value: Any, digits: int = 3) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "-"


def print_versions(rows: list[dict[str, Any]]) -> None:
    """Versions with accuracy, expert / weight / total sparsity, size and aliases."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="moeprune registry")
    for column in ("model", "v", "alias", "method", "accuracy", "expert sp", "weight sp", "total sp", "MB"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        metric = next((row[m] for m in METRICS if m in row), None)
        size = float(row.get("size_bytes", 0) or 0) / 1e6
        table.add_row(
            row["model"],
            str(row["version"]),
            row["alias"] or "-",
            row.get("method", "-"),
            _number(metric),
            _number(row.get("expert_sparsity"), 2),
            _number(row.get("weight_sparsity"), 2),
            _number(row.get("total_sparsity"), 2),
            f"{size:.2f}",
        )
    Console(width=max(120, Console().width)).print(table)


@flow(name="moeprune-demo", log_prints=True)
def demo(root: str = ".", chains: list[str] | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """Run the pipeline flow for each chain, then promotion; print the registry table."""
    for kind in chains or list(CHAINS):  # every chain's params first: the vision chain's typo stops the LM chain too
        load_params(Path(root) / CHAINS[kind] / "params.yaml")
    results = {}
    for kind in chains or list(CHAINS):
        results[kind] = pipeline(root=root, pipeline_dir=CHAINS[kind], tracking_uri=tracking_uri)
        results[f"{kind}-sweep"] = sweep(root=root, pipeline_dir=CHAINS[kind])
        promote(params=str(Path(root) / CHAINS[kind] / "params.yaml"), tracking_uri=tracking_uri)
    return results


if __name__ == "__main__":
    demo()
    print_versions(versions_table(None))
    print("MLflow UI:  bash infra/mlflow_server.sh   then http://127.0.0.1:5000")
    print("Prefect UI: bash infra/prefect_server.sh  then http://127.0.0.1:4200")
