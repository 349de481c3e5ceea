"""The lineage record (`moeprune.json`) and model card written beside every model moeprune makes."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from moeprune.outputs.atomic import sha256_file, weights_sha256, write_json

LINEAGE_FILE = "moeprune.json"
_PACKAGES = ("moeprune", "torch", "transformers", "safetensors", "lm_eval")


def read_lineage(model_dir: str | Path) -> dict[str, Any] | None:
    """The lineage record of a model directory, or None for a model moeprune did not write."""
    path = Path(model_dir) / LINEAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_lineage(model_dir: str | Path, record: dict[str, Any]) -> None:
    write_json(Path(model_dir) / LINEAGE_FILE, record)


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit (with `-dirty` when the tree has changes), or None outside a repository."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _sha_or_none(path: str | Path | None) -> str | None:
    return sha256_file(path) if path and Path(path).is_file() else None


def build_lineage(
    *,
    stage: str,
    params: dict[str, Any],
    parent: str | Path,
    parent_model: Any = None,
    calibration: str | Path | None = None,
    profile: str | Path | None = None,
    scores: str | Path | None = None,
) -> dict[str, Any]:
    """The lineage of a model made by `stage` from the model directory `parent`.

    The base (the original model the chain started from) is inherited from the parent's record; a
    parent without a record is itself the base, and `parent_model` gives its statistics.
    """
    parent = Path(parent)
    parent_record = read_lineage(parent)
    parent_sha = weights_sha256(parent)
    if parent_record is not None:
        base = parent_record["base"]
        stats = parent_record["base_stats"]
        history = parent_record.get("history", []) + [{k: parent_record[k] for k in ("stage", "params")}]
    else:
        base = {"path": str(parent.resolve()), "sha256": parent_sha, "name": parent.name}
        from moeprune.arch.linears import base_stats  # torch, needed only for a parent without a record

        stats = base_stats(parent_model) if parent_model is not None else {}
        history = []
    return {
        "format": 1,
        "stage": stage,
        "params": params,
        "base": base,
        "base_stats": stats,
        "parent": {"path": str(parent.resolve()), "sha256": parent_sha},
        "calibration_sha256": _sha_or_none(calibration) or (parent_record or {}).get("calibration_sha256"),
        "profile_sha256": _sha_or_none(profile) or (parent_record or {}).get("profile_sha256"),
        "scores_sha256": _sha_or_none(scores) or (parent_record or {}).get("scores_sha256"),
        "history": history,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_model_card(model_dir: str | Path, record: dict[str, Any], summary: list[str]) -> None:
    """A README.md for people, saying what the lineage says."""
    base = record["base"]
    lines = [
        "---",
        "library_name: transformers",
        "tags: [moeprune, mixture-of-experts, pruned]",
        "---",
        f"# {Path(model_dir).name}",
        "",
        f"Made by [moeprune](https://github.com/) stage `{record['stage']}` from `{record['parent']['path']}`.",
        "",
        *summary,
        "",
        "## Lineage",
        f"- base model: `{base['path']}` (weights sha256 `{base['sha256'][:16]}…`)",
        f"- parameters: `{json.dumps(record['params'], sort_keys=True)}`",
        f"- calibration data sha256: `{record.get('calibration_sha256')}`",
        f"- scores sha256: `{record.get('scores_sha256')}`",
        f"- git commit: `{record.get('git_commit')}`; packages: `{record['packages']}`",
        f"- made: {record['time']}",
        "",
        "Loads with stock `transformers`: `AutoModelForCausalLM.from_pretrained(path)` (safetensors).",
        "The full record is `moeprune.json` beside this file.",
    ]
    (Path(model_dir) / "README.md").write_text("\n".join(lines) + "\n")
