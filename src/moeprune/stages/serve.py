"""Stage `serve`: serve the Prefect deployments (nightly sweep, promotion) with their cron schedules.

    moeprune serve [--params params.yaml]

Blocks until interrupted; the runs appear in the Prefect UI (`infra/prefect_server.sh`).
"""

from __future__ import annotations

from pathlib import Path

from moeprune.config import load_params
from moeprune.registry.tags import repo_root
from moeprune.stages.sweep import import_flows


def run(params: Path | None = None) -> None:
    """Build the deployments from the params file's `schedules:` and serve them."""
    params_file = Path(params or "params.yaml").resolve()
    config = load_params(params_file)
    root = repo_root(params_file.parent)
    import_flows(root)
    from prefect import serve

    from flows.deployments import build_deployments

    serve(*build_deployments(config, str(root), str(params_file)))
