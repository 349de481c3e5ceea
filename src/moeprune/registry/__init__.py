"""Tracking: MLflow's model registry holds every pruned version with its lineage; promotion moves aliases.

The only core package that talks to MLflow (imported lazily: `import mlflow` costs about 2 s).
`lineage` reads and writes the lineage record `moeprune.json` and the model card (no MLflow, no torch:
the pruning stages write it), `promotion` is the promotion policy (pure), `store` resolves and locks the
store, `versions` finds or creates the version of a model directory, `runs` opens and closes the run
behind it, `tags` reads lineage, DVC and git records into tags, and `catalog` reads versions back
(promotion, downloads), `flavors` logs a version as an MLflow model (transformers flavor for LMs, the
`pyfunc_vmoe` pyfunc for the V-MoE). `download_version` gives the checkpoint directory inside it, which
stock `from_pretrained` loads.

Nothing is imported with the package: `from moeprune.registry.lineage import read_lineage` loads the
lineage module alone. The names below are loaded from their submodule on first use
(`from moeprune.registry import register_model_dir`).
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULE = {
    "download_version": "catalog",
    "list_candidates": "catalog",
    "moeprune_models": "catalog",
    "numeric_tags": "catalog",
    "promote": "catalog",
    "MODEL_ARTIFACT": "runs",
    "mark_orphaned_runs": "runs",
    "EXPERIMENT": "store",
    "check_server": "store",
    "experiment_id": "store",
    "is_server": "store",
    "local_artifact_location": "store",
    "lock_path": "store",
    "mlflow_client": "store",
    "resolve_tracking_uri": "store",
    "store_lock": "store",
    "base_model_name": "versions",
    "find_version": "versions",
    "read_metrics": "versions",
    "register_model_dir": "versions",
    "registered_model_exists": "versions",
    "write_registry_record": "versions",
}

__all__ = sorted(_SUBMODULE)


def __getattr__(name: str) -> Any:
    """`name` from its submodule, imported on first use (the package imports nothing by itself)."""
    if name not in _SUBMODULE:
        raise AttributeError(f"module 'moeprune.registry' has no attribute {name!r}")
    return getattr(importlib.import_module(f"moeprune.registry.{_SUBMODULE[name]}"), name)
