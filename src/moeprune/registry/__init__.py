"""Tracking: MLflow's model registry holds every pruned version with its lineage; promotion moves aliases.

The only core package that talks to MLflow (imported lazily: `import mlflow` costs about 2 s).
`store` resolves and locks the store, `versions` finds or creates the version of a model directory,
`runs` opens and closes the run behind it, `tags` reads lineage, DVC and git records into tags, and
`catalog` reads versions back (promotion, downloads), `flavors` logs a version as an MLflow model
(transformers flavor for LMs, the `pyfunc_vmoe` pyfunc for the V-MoE). `download_version` gives the
checkpoint directory inside it, which stock `from_pretrained` loads.
"""

from moeprune.registry.catalog import download_version, list_candidates, moeprune_models, numeric_tags, promote
from moeprune.registry.runs import MODEL_ARTIFACT, mark_orphaned_runs
from moeprune.registry.store import (
    EXPERIMENT,
    check_server,
    experiment_id,
    is_server,
    local_artifact_location,
    lock_path,
    mlflow_client,
    resolve_tracking_uri,
    store_lock,
)
from moeprune.registry.versions import (
    base_model_name,
    find_version,
    read_metrics,
    register_model_dir,
    registered_model_exists,
    write_registry_record,
)

__all__ = [
    "EXPERIMENT",
    "MODEL_ARTIFACT",
    "base_model_name",
    "check_server",
    "download_version",
    "experiment_id",
    "find_version",
    "is_server",
    "list_candidates",
    "local_artifact_location",
    "lock_path",
    "mark_orphaned_runs",
    "mlflow_client",
    "moeprune_models",
    "numeric_tags",
    "promote",
    "read_metrics",
    "register_model_dir",
    "registered_model_exists",
    "resolve_tracking_uri",
    "store_lock",
    "write_registry_record",
]
