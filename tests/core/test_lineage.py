"""The lineage module: torch-free, one `read_lineage` contract, one `git_commit`, shared with registry tags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from moeprune.registry import lineage, tags

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; import {module}; print('imported')"


def test_lineage_and_its_users_import_without_torch() -> None:
    for module in ("moeprune.registry.lineage", "moeprune.params", "moeprune.registry.tags"):
        done = subprocess.run(
            [sys.executable, "-c", BLOCK_TORCH.format(module=module)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and "imported" in done.stdout, f"{module}: {done.stderr[-800:]}"


def test_lineage_imports_without_mlflow_or_torch() -> None:
    """The pruning stages write lineage: importing it from the registry package must not load MLflow."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['mlflow'] = None; "
        "from moeprune.registry.lineage import read_lineage, write_lineage; print('imported')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-800:]


def test_read_lineage_is_none_without_a_record_and_the_record_with_one(tmp_path: Path) -> None:
    assert lineage.read_lineage(tmp_path) is None
    record = {"stage": "prune-experts", "params": {"method": "stun"}}
    lineage.write_lineage(tmp_path, record)
    assert (tmp_path / lineage.LINEAGE_FILE).is_file()
    assert lineage.read_lineage(tmp_path) == record
    assert json.loads((tmp_path / "moeprune.json").read_text()) == record


def test_registry_tags_use_the_lineage_module() -> None:
    assert tags.read_lineage is lineage.read_lineage
    assert tags.git_commit is lineage.git_commit
    assert not hasattr(tags, "LINEAGE_FILE")


def test_lineage_chain_stops_at_a_parent_without_a_record(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    record = {"stage": "prune-experts", "params": {}, "parent": {"path": str(parent)}}
    assert tags.lineage_chain(tmp_path / "child", record) == [record]
    assert tags.lineage_chain(tmp_path / "child", {}) == []


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
    )


def test_git_commit_marks_a_dirty_tree_and_is_none_outside_git(tmp_path: Path) -> None:
    assert lineage.git_commit(tmp_path) is None  # no repository (tmp_path is outside the checkout)
    _git(tmp_path, "init", "-q")
    assert lineage.git_commit(tmp_path) is None  # before the first commit
    (tmp_path / "a.txt").write_text("one")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "init")
    clean = lineage.git_commit(tmp_path)
    assert clean is not None and len(clean) == 40
    (tmp_path / "a.txt").write_text("two")
    assert lineage.git_commit(tmp_path) == f"{clean}-dirty"


def test_lineage_tags_fall_back_to_the_repository_commit(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "init")
    found = tags.lineage_tags(tmp_path, {}, {}, role="base", weights_sha="0" * 64, base={})
    assert found["git_commit"] == lineage.git_commit(tmp_path)
    recorded = tags.lineage_tags(tmp_path, {"git_commit": "f" * 40}, {}, role="base", weights_sha="0", base={})
    assert recorded["git_commit"] == "f" * 40
