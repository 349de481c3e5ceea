"""MLflow: one run and one registered version per model directory, lineage as tags, promotion.

The only core module that talks to MLflow (imported lazily: `import mlflow` costs about 2 s).
Layout in the registry: one registered model per base model, `<base name>-pruned`; the base itself
is a version tagged role=base (registered automatically when the first pruned model of an
unregistered base arrives); every version carries its lineage and figures as tags and the model
directory as its artifacts, so `download_version` gives a directory stock `from_pretrained` loads.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from moeprune.config import Params, PromoteSection
from moeprune.errors import MoepruneError
from moeprune.io_utils import weights_sha256, write_json
from moeprune.promotion import Candidate, Decision, apply_decision, decide_promotion
from moeprune.registry_tags import lineage_tags, read_lineage, repo_root

EXPERIMENT = "moeprune"
MODEL_ARTIFACT = "model"
GENERIC_DIR_NAMES = {"finetuned", "pretrained", "model", "base", "checkpoint", "final"}


def resolve_tracking_uri(
    tracking_uri: str | None = None, params: Params | None = None, start: Path | None = None
) -> str:
    """Argument, else $MLFLOW_TRACKING_URI, else params.yaml's registry.tracking_uri, else repo sqlite.

    The repository of the default store is found from `start` (default: the working directory).
    """
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if params is not None and params.registry.tracking_uri:
        return params.registry.tracking_uri
    return f"sqlite:///{repo_root(start) / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """True for a tracking server (http/https), False for a local store."""
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message when a tracking server does not answer its health check."""
    if not is_server(uri):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise MoepruneError(
            f"MLflow tracking server {uri} is not reachable ({reason}); start it with infra/mlflow_server.sh "
            f"or point registry.tracking_uri / MLFLOW_TRACKING_URI at a running one"
        ) from None


def mlflow_client(uri: str) -> Any:
    """An `MlflowClient` for `uri` (tracking and registry), after the server health check."""
    check_server(uri)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: Any, uri: str) -> str:
    """The `moeprune` experiment; a local store keeps its artifacts in `mlruns/` beside its database.

    (Beside the database, not under the working directory: a DVC experiment runs in a temporary
    copy of the repository that is deleted afterwards.)
    """
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(EXPERIMENT, artifact_location=local_artifact_location(uri))


def local_artifact_location(uri: str) -> str | None:
    """`file://.../mlruns` beside a sqlite store, `<repo>/mlruns` for other local stores, None for servers."""
    if is_server(uri):
        return None
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return (repo_root() / "mlruns").as_uri()


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
    params: Params | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Log a model directory as an MLflow run and register it as a version of `<base>-pruned`.

    Args:
        model_dir: a Hugging Face directory (written by moeprune, with `moeprune.json`, or a base model).
        metrics: the flat metrics JSON of the model (path or mapping), or None.
        params: validated params.yaml (registry name and tracking URI), or None.
        tracking_uri: overrides every other source of the tracking URI.

    Returns:
        `{name, version, run_id, source, role, created, base_version, tracking_uri}`; `created` is False
        when the same weights were registered before (the existing version is returned, its missing
        metric tags filled in).
    """
    model_dir = Path(model_dir).resolve()
    uri = resolve_tracking_uri(tracking_uri, params)
    lineage = read_lineage(model_dir)
    sha = weights_sha256(model_dir)
    base = base_record(model_dir, lineage, sha)
    name = (params.registry.model_name if params and params.registry.model_name else None) or base_model_name(
        base["path"]
    )
    client = mlflow_client(uri)
    ensure_registered_model(client, name, base)
    values = read_metrics(metrics)
    role = "base" if base["sha256"] == sha else "pruned"
    base_version = None if role == "base" else ensure_base_version(client, name, base, params, uri)
    existing = find_version(client, name, sha)
    if existing is not None:
        fill_missing_metrics(client, existing, values)
        return version_record(existing, name, role, uri, created=False, base_version=base_version)
    tags = lineage_tags(model_dir, lineage, values, role=role, weights_sha=sha, base=base)
    parent = parent_version(client, name, model_dir, lineage, base_version)
    if parent:
        tags["parent_version"] = parent
    run_id, source = log_run(client, uri, model_dir, lineage, values, tags, metrics, name)
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    return version_record(version, name, role, uri, created=True, base_version=base_version)


def base_record(model_dir: Path, lineage: dict, sha: str) -> dict[str, str]:
    """`{path, sha256}` of the base model: the lineage's, or the directory itself when it has none."""
    base = lineage.get("base") or {}
    if not base.get("sha256"):
        return {"path": str(model_dir), "sha256": sha}
    return {"path": str(base.get("path", "")), "sha256": str(base["sha256"])}


def ensure_base_version(client: Any, name: str, base: dict[str, str], params: Params | None, uri: str) -> str:
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
    return str(register_model_dir(path, None, params, uri)["version"])


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
        parent = read_lineage(parent_path).get("parent") if parent_path.is_dir() else None
        seen += 1
    return base_version or ""


def log_run(
    client: Any, uri: str, model_dir: Path, lineage: dict, values: dict, tags: dict, metrics: Any, name: str
) -> tuple[str, str]:
    """One MLflow run: params, metrics, lineage, plots and the model directory; returns (run_id, source)."""
    run = client.create_run(
        experiment_id(client, uri),
        run_name=f"{name}-{tags['role']}-{tags['weights_sha256'][:8]}",
        tags={key: tags[key] for key in ("role", "method", "base", "weights_sha256") if key in tags},
    )
    run_id = run.info.run_id
    try:
        for key, value in flatten(lineage.get("params") or {}, prefix="").items():
            client.log_param(run_id, key[:250], str(value)[:6000])
        for key, value in values.items():
            client.log_metric(run_id, key, value)
        client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
        if isinstance(metrics, (str, Path)) and Path(metrics).is_file():
            client.log_artifact(run_id, str(metrics), "metrics")
        for plot in plot_files(model_dir, metrics):
            client.log_artifact(run_id, str(plot), "plots")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id, f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"


def plot_files(model_dir: Path, metrics: Any) -> list[Path]:
    """PNG plots in the model directory and in a `plots/` folder beside the metrics file."""
    plots = sorted(model_dir.glob("*.png"))
    if isinstance(metrics, (str, Path)):
        plots += sorted((Path(metrics).parent / "plots").glob("*.png"))
    return plots


def flatten(data: dict, prefix: str) -> dict[str, Any]:
    """Nested mapping to dotted keys."""
    flat = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


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


def download_version(name: str, version: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Download a version's model directory (`version` is a number or an alias such as champion)."""
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
    return Path(local)


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
    decisions = []
    for name in names:
        if not registered_model_exists(client, name):
            raise MoepruneError(f"registered model {name!r} not found at {uri}; check registry.model_name")
        decision = decide_promotion(list_candidates(client, name), policy, model_name=name)
        if not dry_run:
            apply_decision(client, decision)
        decisions.append(decision)
    return decisions
