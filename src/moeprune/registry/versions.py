"""Registered versions: find or create the version of a model directory, its base first.

Layout in the registry: one registered model per base model, `<base name>-pruned`; the base itself
is a version tagged role=base (registered automatically when the first pruned model of an
unregistered base arrives); every version carries its lineage and figures as tags and the model
directory as its artifacts. The weights' sha256 (tag `weights_sha256`) identifies a version: the
lookup and the creation run under the store lock, so the same weights give one version, and a base
one `role=base` version, however many registrations run at once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moeprune.errors import MoepruneError
from moeprune.outputs import weights_sha256, write_json
from moeprune.params import RegistrySection
from moeprune.registry.flavors import FLAVOR_TAG, model_card_text, model_flavor
from moeprune.registry.lineage import read_lineage
from moeprune.registry.runs import MODEL_ARTIFACT, log_contents, mark_orphaned_runs, registration_run
from moeprune.registry.store import experiment_id, mlflow_client, resolve_tracking_uri, store_lock
from moeprune.registry.tags import lineage_tags

GENERIC_DIR_NAMES = {"finetuned", "pretrained", "model", "base", "checkpoint", "final"}
RUN_TAGS = ("role", "method", "base", "weights_sha256")


def base_model_name(base_path: str | Path) -> str:
    """`<base name>-pruned`; a generic directory name (finetuned, model...) is prefixed by its parent's."""
    path = Path(base_path)
    name = path.name
    if name.lower() in GENERIC_DIR_NAMES and path.parent.name:
        name = f"{path.parent.name}-{name}"
    return f"{name}-pruned"


def read_metrics(metrics: Path | dict | None) -> dict[str, float]:
    """The numeric entries of a flat metrics JSON (file or mapping); NaN and non-numbers dropped."""
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        path = Path(metrics)
        if not path.is_file():
            raise MoepruneError(f"{path}: metrics file not found; run `moeprune evaluate ... --out {path}` first")
        metrics = json.loads(path.read_text())
    values = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            values[key] = float(value)
    return values


def find_version(client: Any, name: str, sha256: str) -> Any | None:
    """The version of `name` whose weights have this sha256, if one is registered."""
    if not registered_model_exists(client, name):
        return None
    found = client.search_model_versions(f"name = '{name}' and tags.weights_sha256 = '{sha256}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def registered_model_exists(client: Any, name: str) -> bool:
    """True when the registered model exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def ensure_registered_model(client: Any, name: str, base: dict[str, str]) -> None:
    """Create the registered model for a base on first use."""
    if registered_model_exists(client, name):
        return
    client.create_registered_model(
        name,
        tags={"moeprune": "true", "base_path": base.get("path", ""), "base_sha256": base.get("sha256", "")},
        description=f"Pruned versions of {base.get('path', name)} (moeprune); v1 is the base model.",
    )


def register_model_dir(
    model_dir: str | Path,
    metrics: Path | dict | None = None,
    registry: RegistrySection | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Log a model directory as an MLflow run and register it as a version of `<base>-pruned`.

    Safe to run from many processes at once on one local store: the lookup and the creation hold the
    store lock, and RUNNING runs left by killed registrations are ended as KILLED first.

    Args:
        model_dir: a Hugging Face directory (written by moeprune, with `moeprune.json`, or a base model).
        metrics: the flat metrics JSON of the model (path or mapping), or None.
        registry: params.yaml's validated `registry` section (model name and tracking URI), or None.
        tracking_uri: overrides every other source of the tracking URI.

    Returns:
        `{name, version, run_id, source, role, created, base_version, tracking_uri}`; `created` is False
        when the same weights were registered before (the existing version is returned, its missing
        metric tags filled in).
    """
    model_dir = Path(model_dir).resolve()
    uri = resolve_tracking_uri(tracking_uri, registry)
    lineage = read_lineage(model_dir) or {}
    sha = weights_sha256(model_dir)
    values = read_metrics(metrics)
    client = mlflow_client(uri)
    with store_lock(uri):
        mark_orphaned_runs(client, experiment_id(client, uri))
        return find_or_create(client, uri, model_dir, lineage, sha, values, metrics, registry)


def find_or_create(
    client: Any,
    uri: str,
    model_dir: Path,
    lineage: dict,
    sha: str,
    values: dict[str, float],
    metrics: Any,
    registry: RegistrySection | None,
) -> dict[str, Any]:
    """The version holding these weights: the existing one (metrics filled in) or a new one.

    Call under `store_lock(uri)`: between the lookup and the creation nobody else may register.
    """
    base = base_record(model_dir, lineage, sha)
    name = (registry.model_name if registry else None) or base_model_name(base["path"])
    ensure_registered_model(client, name, base)
    role = "base" if base["sha256"] == sha else "pruned"
    base_version = None if role == "base" else ensure_base_version(client, name, base, registry, uri)
    existing = find_version(client, name, sha)
    if existing is not None:
        fill_missing_metrics(client, existing, values)
        return version_record(existing, name, role, uri, created=False, base_version=base_version)
    tags = lineage_tags(model_dir, lineage, values, role=role, weights_sha=sha, base=base)
    parent = parent_version(client, name, model_dir, lineage, base_version)
    if parent:
        tags["parent_version"] = parent
    version = create_version(client, uri, name, model_dir, lineage, values, tags, metrics)
    return version_record(version, name, role, uri, created=True, base_version=base_version)


def create_version(
    client: Any, uri: str, name: str, model_dir: Path, lineage: dict, values: dict, tags: dict, metrics: Any
) -> Any:
    """One run (params, metrics, lineage, plots, the model) and the model version made from it.

    The model is logged in its MLflow flavor (`flavors.model_flavor`, recorded as tag `mlflow_flavor`);
    the model card is the version's description.
    """
    run_name = f"{name}-{tags['role']}-{tags['weights_sha256'][:8]}"
    flavor = model_flavor(model_dir)
    tags = {**tags, FLAVOR_TAG: flavor}
    run_tags = {key: tags[key] for key in (*RUN_TAGS, FLAVOR_TAG) if key in tags}
    with registration_run(client, experiment_id(client, uri), run_name, run_tags) as run:
        log_contents(client, run.info.run_id, model_dir, lineage, values, metrics, flavor)
        source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"
        return client.create_model_version(
            name, source=source, run_id=run.info.run_id, tags=tags, description=model_card_text(model_dir)
        )


def base_record(model_dir: Path, lineage: dict, sha: str) -> dict[str, str]:
    """`{path, sha256}` of the base model: the lineage's, or the directory itself when it has none."""
    base = lineage.get("base") or {}
    if not base.get("sha256"):
        return {"path": str(model_dir), "sha256": sha}
    return {"path": str(base.get("path", "")), "sha256": str(base["sha256"])}


def ensure_base_version(
    client: Any, name: str, base: dict[str, str], registry: RegistrySection | None, uri: str
) -> str:
    """The base's version number, registering the base directory first when it is not there yet."""
    found = find_version(client, name, base["sha256"])
    if found is not None:
        return str(found.version)
    path = Path(base["path"])
    if not path.is_dir() or weights_sha256(path) != base["sha256"]:
        raise MoepruneError(
            f"base model {path} is not registered and not on disk with the sha256 the lineage records; "
            f"register the base first with `moeprune register --model BASE --metrics BASE_METRICS.json`"
        )
    return str(register_model_dir(path, None, registry, uri)["version"])


def parent_version(client: Any, name: str, model_dir: Path, lineage: dict, base_version: str | None) -> str:
    """The nearest registered ancestor along the lineage's parents (else the base version, else "")."""
    parent = lineage.get("parent")
    seen = 0
    while parent and seen < 16:
        parent_path = Path(parent["path"] if isinstance(parent, dict) else parent)
        sha = parent.get("sha256") if isinstance(parent, dict) else None
        if sha is None and parent_path.is_dir() and any(parent_path.glob("*.safetensors")):
            sha = weights_sha256(parent_path)
        found = find_version(client, name, sha) if sha else None
        if found is not None:
            return str(found.version)
        parent = (read_lineage(parent_path) or {}).get("parent") if parent_path.is_dir() else None
        seen += 1
    return base_version or ""


def fill_missing_metrics(client: Any, version: Any, values: dict[str, float]) -> None:
    """Add metric tags (and run metrics) an existing version lacks; existing figures are never changed."""
    missing = {k: v for k, v in values.items() if k not in (version.tags or {})}
    for key, value in missing.items():
        client.set_model_version_tag(version.name, str(version.version), key, f"{value:.10g}")
        if version.run_id:
            client.log_metric(version.run_id, key, value)


def version_record(version: Any, name: str, role: str, uri: str, created: bool, base_version: str | None) -> dict:
    """The JSON-ready summary of a registered version."""
    return {
        "name": name,
        "version": str(version.version),
        "run_id": version.run_id,
        "source": version.source,
        "role": (version.tags or {}).get("role", role),
        "created": created,
        "base_version": base_version or (str(version.version) if role == "base" else None),
        "tracking_uri": uri,
    }


def write_registry_record(metrics_path: Path, record: dict[str, Any]) -> Path:
    """Write `<metrics stem>.registry.json` beside the metrics file."""
    out = Path(metrics_path).with_suffix(".registry.json")
    write_json(out, record)
    return out
