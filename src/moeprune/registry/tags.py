"""The tags a registered version carries: lineage, methods, figures, DVC stage hashes, git commit.

No MLflow here: plain reading of `moeprune.json` lineage records (through `moeprune.registry.lineage`), `dvc.lock`
and git.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from moeprune.registry.lineage import git_commit, read_lineage

EXPERT_STAGES = {"prune-experts", "prune_experts"}
UNSTRUCTURED_STAGES = {"prune-unstructured", "prune_unstructured"}
SHA_KEYS = ("calibration_sha256", "profile_sha256", "scores_sha256")


def repo_root(start: Path | None = None) -> Path:
    """The repository root above `start` (default: cwd): the nearest `.dvc` or `.git` directory.

    A pipeline folder such as pipelines/vision holds a dvc.yaml but shares the repository's MLflow
    store, so `dvc.yaml` alone marks a root only when no repository is found.
    """
    here = (start or Path.cwd()).resolve()
    for marker in ((".dvc", ".git"), ("dvc.yaml",)):
        for candidate in (here, *here.parents):
            if any((candidate / name).exists() for name in marker):
                return candidate
    return here


def model_repo(model_dir: Path) -> Path:
    """The repository holding `model_dir` (its dvc.lock and commit), else the working directory's."""
    found = repo_root(Path(model_dir))
    if (found / ".git").exists() or (found / "dvc.yaml").is_file():
        return found
    return repo_root()


def lineage_chain(model_dir: Path, lineage: dict[str, Any], limit: int = 16) -> list[dict[str, Any]]:
    """The stage records from this model back to its base, nearest first.

    The record's own `history` (every earlier stage's `{stage, params}`) when it has one, else the
    parents' records that are still on disk.
    """
    if "history" in lineage:
        return [lineage, *reversed(lineage["history"])]
    chain = [lineage] if lineage else []
    parent = lineage.get("parent")
    while parent and len(chain) < limit:
        parent_dir = Path(parent["path"] if isinstance(parent, dict) else parent)
        record = read_lineage(parent_dir) if parent_dir.is_dir() else None
        if not record:
            break
        chain.append(record)
        parent = record.get("parent")
    return chain


def scores_method(params: dict[str, Any]) -> str | None:
    """The scoring method of a prune-experts record: its params, else the scores JSON it names."""
    for key in ("score_method", "method"):
        if params.get(key):
            return str(params[key])
    scores = params.get("scores")
    if scores and Path(scores).is_file():
        return json.loads(Path(scores).read_text()).get("method")
    return None


def describe_methods(chain: list[dict[str, Any]]) -> dict[str, str]:
    """`expert_method`, `unstructured_method` and their combination `method` ("stun+wanda")."""
    expert, unstructured = None, None
    for record in chain:
        stage, params = record.get("stage"), record.get("params") or {}
        if stage in EXPERT_STAGES and expert is None:
            expert = scores_method(params)
        if stage in UNSTRUCTURED_STAGES and unstructured is None:
            method = params.get("method")
            unstructured = None if method in (None, "none") else str(method)
            if unstructured and params.get("owl"):
                unstructured = f"owl-{unstructured}"
            if unstructured and params.get("nm"):
                unstructured = f"{unstructured}-{params['nm']}"
    parts = [m for m in (expert, unstructured) if m]
    return {
        "method": "+".join(parts) if parts else ("base" if not chain else "none"),
        "expert_method": expert or "none",
        "unstructured_method": unstructured or "none",
    }


def first_value(chain: list[dict[str, Any]], key: str) -> str:
    """The first non-empty value of `key` along the chain (nearest record first)."""
    for record in chain:
        if record.get(key):
            return str(record[key])
    return ""


def dvc_stage_hashes(root: Path) -> dict[str, str]:
    """`dvc.<stage>` -> md5 of the stage's outputs as recorded in `dvc.lock` (when there is one)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    hashes = {}
    for stage, record in stages.items():
        outs = [out.get("md5", "") for out in record.get("outs", []) if out.get("md5")]
        if outs:
            hashes[f"dvc.{stage}"] = ",".join(outs)[:500]
    return hashes


def lineage_tags(
    model_dir: Path,
    lineage: dict[str, Any],
    values: dict[str, float],
    role: str,
    weights_sha: str,
    base: dict,
) -> dict[str, str]:
    """Every tag of a new version: role, base, methods, lineage hashes, figures, DVC hashes, commit."""
    chain = lineage_chain(model_dir, lineage)
    root = model_repo(model_dir)
    tags = {
        "role": role,
        "base": base.get("path", ""),
        "base_sha256": base.get("sha256", ""),
        "weights_sha256": weights_sha,
        "model_dir": str(model_dir),
        "stage": str(lineage.get("stage", "base" if role == "base" else "")),
        "git_commit": str(lineage.get("git_commit") or git_commit(root) or ""),
    }
    tags.update(describe_methods(chain) if role != "base" else {"method": "base"})
    for key in SHA_KEYS:
        tags[key] = first_value(chain, key)
    if role == "base":
        values = {"expert_sparsity": 0.0, "weight_sparsity": 0.0, "total_sparsity": 0.0, **values}
    tags.update({key: f"{value:.10g}" for key, value in values.items()})
    tags.update(dvc_stage_hashes(root))
    return {key: value for key, value in tags.items() if value != ""}
