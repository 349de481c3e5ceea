"""The `promote` flow: apply params.yaml's promotion policy to the MLflow registry.

Scheduled after the nightly sweep (flows/deployments.py, infra/prefect.yaml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from moeprune.params import load_params
from tasks.stages import promote_models


def decisions_markdown(result: dict[str, Any]) -> str:
    """One paragraph per registered model: champion, challenger and reason."""
    lines = ["# Promotion" + (" (dry run)" if result["dry_run"] else "")]
    for decision in result["decisions"]:
        lines.append(
            f"- **{decision['model_name']}**: champion v{decision['champion']} "
            f"(was v{decision['previous_champion']}), challenger v{decision['challenger']}: "
            f"{decision['reason']}"
        )
    return "\n".join(lines)


@flow(name="moeprune-promote", log_prints=True)
def promote(params: str = "params.yaml", tracking_uri: str | None = None, dry_run: bool = False) -> dict:
    """Decide and (unless `dry_run`) move `champion`/`challenger`; publish the decision as an artifact."""
    load_params(params)  # first: a bad key stops the flow before the registry is touched
    result = promote_models(str(Path(params)), tracking_uri, dry_run)
    create_markdown_artifact(decisions_markdown(result), key="moeprune-promotion")
    return result


if __name__ == "__main__":
    promote()
