"""The MLflow run behind each registered version: opened, filled, and always closed.

A run is ended FINISHED when its block succeeds and FAILED when it raises (Ctrl-C included). A process
killed outright (kill -9, out of memory, power loss) cannot end its run, so every run records who
opened it (`moeprune.pid`, `moeprune.pid_start`, `moeprune.host`); the next registration on the
store ends the RUNNING runs of this host whose process is gone as KILLED.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moeprune.registry.flavors import FILES, save_flavor

MODEL_ARTIFACT = "model"
PID_TAG, START_TAG, HOST_TAG = "moeprune.pid", "moeprune.pid_start", "moeprune.host"
ENDED_BY_TAG = "moeprune.ended_by"


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # field 22 of proc(5); the name in (...) may hold spaces


def process_gone(pid: int, start: str = "") -> bool:
    """True when `pid` has exited (a zombie counts) or now names a later process than `start`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state == "Z" or bool(start and process_start(pid) not in ("", start))


def identity_tags() -> dict[str, str]:
    """The tags that let a later process tell whether this one is still alive."""
    pid = os.getpid()
    return {PID_TAG: str(pid), START_TAG: process_start(pid), HOST_TAG: socket.gethostname()}


def is_orphan(run: Any, host: str) -> bool:
    """A RUNNING run opened on this host by a process that is gone (runs without moeprune's tags: never)."""
    tags = run.data.tags or {}
    pid = tags.get(PID_TAG, "")
    return tags.get(HOST_TAG) == host and pid.isdigit() and process_gone(int(pid), tags.get(START_TAG, ""))


def mark_orphaned_runs(client: Any, experiment: str) -> list[str]:
    """End the experiment's orphaned RUNNING runs as KILLED; returns their run ids."""
    host = socket.gethostname()
    marked = []
    for run in client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'"):
        if is_orphan(run, host):
            run_id = run.info.run_id
            client.set_tag(run_id, ENDED_BY_TAG, f"pid {os.getpid()} on {host}: its process had gone")
            client.set_terminated(run_id, status="KILLED")
            marked.append(run_id)
    return marked


@contextlib.contextmanager
def registration_run(client: Any, experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[Any]:
    """Open a run tagged with this process's identity; end it FINISHED, or FAILED if the block raises."""
    run = client.create_run(experiment, run_name=run_name, tags={**tags, **identity_tags()})
    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error when the store is the problem
            client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def log_contents(
    client: Any, run_id: str, model_dir: Path, lineage: dict, values: dict, metrics: Any, flavor: str = FILES
) -> None:
    """Params (the lineage's), metrics, the model (an MLflow model folder, see `flavors`), metrics file, plots."""
    for key, value in flatten(lineage.get("params") or {}, prefix="").items():
        client.log_param(run_id, key[:250], str(value)[:6000])
    for key, value in values.items():
        client.log_metric(run_id, key, value)
    log_model_folder(client, run_id, model_dir, flavor)
    if isinstance(metrics, (str, Path)) and Path(metrics).is_file():
        client.log_artifact(run_id, str(metrics), "metrics")
    for plot in plot_files(model_dir, metrics):
        client.log_artifact(run_id, str(plot), "plots")


def log_model_folder(client: Any, run_id: str, model_dir: Path, flavor: str) -> None:
    """Log the model under `MODEL_ARTIFACT`: its MLflow model folder, or the directory as it is (FILES)."""
    if flavor == FILES:
        client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
        return
    with tempfile.TemporaryDirectory(prefix="moeprune-mlmodel-") as tmp:
        folder = Path(tmp) / MODEL_ARTIFACT
        save_flavor(model_dir, folder, flavor)
        client.log_artifacts(run_id, str(folder), MODEL_ARTIFACT)


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
