"""Reading the registry back: versions as promotion candidates, downloads, and the promotion itself."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from moeprune.errors import MoepruneError
from moeprune.params import PromoteSection
from moeprune.registry.flavors import checkpoint_dir
from moeprune.registry.promotion import Candidate, Decision, apply_decision, decide_promotion
from moeprune.registry.store import mlflow_client, resolve_tracking_uri, store_lock
from moeprune.registry.versions import registered_model_exists


def download_version(name: str, version: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Download a version and return its Hugging Face directory (`version`: a number or an alias such as champion).

    For a version logged with an MLflow flavor the MLflow model folder is downloaded whole (MLmodel beside
    it) and the checkpoint inside it is returned; stock `from_pretrained` loads it.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    from mlflow.artifacts import download_artifacts

    model_version = (
        client.get_model_version(name, version)
        if str(version).isdigit()
        else client.get_model_version_by_alias(name, version)
    )
    Path(dst).mkdir(parents=True, exist_ok=True)
    local = download_artifacts(artifact_uri=model_version.source, dst_path=str(dst), tracking_uri=uri)
    return checkpoint_dir(Path(local))


def list_candidates(client: Any, name: str) -> list[Candidate]:
    """Every version of a registered model as the promotion policy sees it."""
    model = client.get_registered_model(name)
    aliases_by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases_by_version.setdefault(str(version), []).append(alias)
    candidates = []
    for version in client.search_model_versions(f"name = '{name}'"):
        tags = version.tags or {}
        candidates.append(
            Candidate(
                version=int(version.version),
                role=tags.get("role", "pruned"),
                values=numeric_tags(tags),
                aliases=aliases_by_version.get(str(version.version), []),
            )
        )
    return sorted(candidates, key=lambda c: c.version)


def numeric_tags(tags: dict[str, str]) -> dict[str, float]:
    """The tags whose values parse as finite numbers."""
    values = {}
    for key, value in tags.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            values[key] = number
    return values


def moeprune_models(client: Any) -> list[str]:
    """Names of the registered models moeprune created."""
    return sorted(m.name for m in client.search_registered_models() if (m.tags or {}).get("moeprune") == "true")


def promote(
    tracking_uri: str | None, policy: PromoteSection, dry_run: bool = False, model_name: str | None = None
) -> list[Decision]:
    """Apply the promotion policy to one registered model (or every moeprune model).

    Args:
        tracking_uri: the MLflow tracking URI (resolved as in `resolve_tracking_uri`).
        policy: params.yaml's `promote` section.
        dry_run: decide and return, change nothing.
        model_name: the registered model; None promotes every model moeprune registered.

    Returns:
        One decision per registered model.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    names = [model_name] if model_name else moeprune_models(client)
    if not names:
        raise MoepruneError(f"no moeprune model is registered at {uri}; run `moeprune register` (or dvc repro) first")
    with store_lock(uri):  # decide on the versions that exist while the aliases move
        return [promote_one(client, uri, name, policy, dry_run) for name in names]


def promote_one(client: Any, uri: str, name: str, policy: PromoteSection, dry_run: bool) -> Decision:
    """Decide for one registered model and, unless `dry_run`, move its aliases."""
    if not registered_model_exists(client, name):
        raise MoepruneError(f"registered model {name!r} not found at {uri}; check registry.model_name")
    decision = decide_promotion(list_candidates(client, name), policy, model_name=name)
    if not dry_run:
        apply_decision(client, decision)
    return decision
