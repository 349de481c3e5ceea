"""The tasks: each DVC stage reproduced alone, the registry calls with retries, one DVC experiment.

Tasks are thin: the work happens in `moeprune` stages (through DVC) or in `moeprune.stages.register` /
`promote`, which import MLflow but never torch.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

STAGES = (
    "testbed",
    "calibrate",
    "profile",
    "score",
    "prune_experts",
    "prune_unstructured",
    "evaluate_base",
    "evaluate_pruned",
)
REGISTER_RETRIES = 2
REGISTER_RETRY_DELAY_S = 5.0
DVC_LOCK = threading.Lock()  # one DVC call at a time in this process (it changes the working directory)


def stage_target(pipeline_dir: str, stage: str) -> str:
    """The DVC target of `stage` in the pipeline at `pipeline_dir` (relative to the repository root)."""
    return stage if pipeline_dir in ("", ".") else f"{pipeline_dir.rstrip('/')}/dvc.yaml:{stage}"


def put_venv_on_path() -> None:
    """Stage commands call `moeprune` and `dvc`: make this interpreter's scripts folder come first."""
    scripts = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != scripts:
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


def anchored(root: str | Path, target: str) -> str:
    """`target` as an absolute `<root>/<dir>/dvc.yaml:stage`.

    DVC resolves a bare stage name against the working directory, not the repository it was given:
    from anywhere else it would run (or commit) some other folder's dvc.yaml.
    """
    path, _, stage = target.rpartition(":")
    if not path or Path(path).name != "dvc.yaml":
        path, stage = "dvc.yaml", target
    return f"{Path(root).resolve() / path}:{stage}"


@contextmanager
def open_repo(root: str | Path) -> Iterator[Any]:
    """The DVC repository at `root`, with the working directory there while it is open.

    DVC's Python API assumes the process works inside the repository (its run cache records stage
    paths relative to the working directory), so calls are serialised and run from `root`.
    """
    from dvc.repo import Repo

    with DVC_LOCK, contextlib.chdir(Path(root).resolve()), Repo(".") as repo:
        yield repo


def existing_experiments(root: str | Path) -> set[str]:
    """Names of the DVC experiments already run on the current commit (a rerun of a sweep skips them)."""
    with open_repo(root) as repo:
        return {name for runs in repo.experiments.ls().values() for name, _ in runs}


def reproduce(root: str | Path, target: str) -> list[str]:
    """`dvc repro --single-item target` from Python; returns the stages that ran (empty: up to date)."""
    put_venv_on_path()
    with open_repo(root) as repo:
        stages = repo.reproduce(anchored(root, target), single_item=True)
    return [stage.addressing for stage in stages]


def stage_task(stage: str) -> Any:
    """The task that reproduces one DVC stage."""

    @task(name=f"dvc-{stage}", task_run_name=f"dvc repro {stage}")
    def reproduce_one(root: str, pipeline_dir: str = ".") -> list[str]:
        ran = reproduce(root, stage_target(pipeline_dir, stage))
        get_run_logger().info("%s: %s", stage, "ran" if ran else "up to date, skipped")
        return ran

    return reproduce_one


STAGE_TASKS = {stage: stage_task(stage) for stage in STAGES}


@task(name="dvc-reproduce")
def reproduce_stage(root: str, target: str) -> list[str]:
    """Reproduce any one DVC target (a stage name or `path/dvc.yaml:stage`)."""
    return reproduce(root, target)


@task(name="dvc-commit")
def commit_stage(root: str, target: str) -> None:
    """Record a stage whose outputs were written outside `dvc repro` (the register task) in dvc.lock."""
    with open_repo(root) as repo:
        repo.commit(anchored(root, target), force=True)


@task(name="register", retries=REGISTER_RETRIES, retry_delay_seconds=REGISTER_RETRY_DELAY_S)
def register_model(
    model: str, metrics: str, params: str | None = None, tracking_uri: str | None = None
) -> dict[str, Any]:
    """`moeprune register`: retried, because a tracking server can be briefly unavailable."""
    from moeprune.params import registry_section
    from moeprune.stages.register import run

    return run(Path(model), Path(metrics), registry_section(params or None), tracking_uri)


@task(name="promote", retries=REGISTER_RETRIES, retry_delay_seconds=REGISTER_RETRY_DELAY_S)
def promote_models(params: str | None = None, tracking_uri: str | None = None, dry_run: bool = False) -> dict:
    """`moeprune promote`: apply the policy (retried like the registry calls)."""
    from moeprune.stages.promote import run

    return run(Path(params) if params else None, tracking_uri, dry_run)


@task(name="dvc-experiment", task_run_name="dvc exp run {name}")
def run_experiment(cwd: str, name: str, overrides: dict[str, Any], tracking_uri: str | None = None) -> dict[str, Any]:
    """One sweep point: `dvc exp run --temp -n NAME -S key=value ...` in the pipeline's folder.

    `tracking_uri` is handed to the experiment as $MLFLOW_TRACKING_URI: it runs in a temporary copy
    of the repository, whose default sqlite store would be deleted with it.
    """
    put_venv_on_path()
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name]
    for key, value in overrides.items():
        command += ["-S", f"{key}={value}"]
    env = {**os.environ, **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    tail = (result.stdout + result.stderr)[-4000:]
    if result.returncode != 0:
        raise RuntimeError(f"experiment {name} failed (exit {result.returncode}): {tail}")
    get_run_logger().info("experiment %s done", name)
    return {"name": name, "overrides": overrides, "output": tail}
