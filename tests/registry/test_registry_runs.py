"""Registry runs are always closed: FAILED on an error or SIGTERM, KILLED by the next registration after
kill -9; the store lock: where it lives, that it is held across processes, that a killed holder frees it;
a store that cannot be opened is one error line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from registry_helpers import metrics_file, pruned_child, tiny_mixtral

from moeprune import registry
from moeprune.errors import MoepruneError
from moeprune.registry import runs, store, versions

NAME = "lm-finetuned-pruned"
# README's "Reliability" table: (fault, inputs tested, outcome), rendered by tests/reliability_table.py.
RELIABILITY_ROWS = [
    (
        "a registration failing inside its MLflow run",
        "the upload raising `OSError` (disk full)",
        "the run ends FAILED and no model version is created; the retry registers and its run ends FINISHED",
    ),
    (
        "SIGTERM to a registration",
        "a real `register` process stopped inside its run",
        "the run is ended FAILED before the process exits (exit 143)",
    ),
    (
        "kill -9 of a registration",
        "a real `register` process stopped inside its run; orphaned runs: dead pid, reused pid, live process, "
        "another host, no tags",
        "the run stays RUNNING until the next registration, which goes ahead (the kill freed the store lock) "
        "and marks it KILLED naming the gone pid; only runs of gone processes on this host are marked",
    ),
    (
        "store lock held by another registration",
        "a process holding the lock past the (shortened) timeout",
        "the registration waits, then fails with an error naming the lock file (`mlflow.db.lock`)",
    ),
    (
        "a store that is not a database",
        "an `mlflow.db` holding text",
        "a `MoepruneError` naming the store: `mlflow.db could not be opened (… file is not a database)`",
    ),
]
# `moeprune register`'s stage, stopped inside its run (after writing `started`) until it is killed.
STUCK_REGISTER = """
import sys, time
from pathlib import Path
from moeprune.registry import versions
from moeprune.stages.register import run
def stuck(*args, **kwargs):
    Path(sys.argv[4]).write_text("started")
    time.sleep(600)
versions.log_contents = stuck
run(Path(sys.argv[1]), Path(sys.argv[2]), None, sys.argv[3])
"""
HOLD_LOCK = """
import sys, time
from pathlib import Path
from moeprune.registry.store import store_lock
with store_lock(sys.argv[1]):
    Path(sys.argv[2]).write_text("held")
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    base = tiny_mixtral(root / "lm" / "finetuned")
    return {"base": base, "child": pruned_child(base, root / "child", seed=1)}


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def statuses(uri: str) -> list[str]:
    mlflow_client = client(uri)
    return sorted(run.info.status for run in mlflow_client.search_runs([registry.experiment_id(mlflow_client, uri)]))


def start_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} not written within {timeout} s"
        time.sleep(0.1)


def test_lock_file_beside_a_local_store_none_for_a_server(tmp_path):
    assert store.lock_path(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlflow.db.lock"
    assert store.lock_path("sqlite:///runs/m.db?timeout=20") == Path("runs/m.db.lock")
    assert store.lock_path(f"file://{tmp_path}/mlruns") == tmp_path / "mlruns.lock"
    assert store.lock_path(str(tmp_path / "mlruns")) == tmp_path / "mlruns.lock"
    for uri in ("http://127.0.0.1:5000", "https://mlflow.example", "postgresql://db/mlflow", "sqlite://"):
        assert store.lock_path(uri) is None


def test_an_error_inside_the_run_ends_it_failed_and_creates_no_version(models, uri, monkeypatch):
    def broken_upload(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(versions, "log_contents", broken_upload)
    with pytest.raises(OSError, match="disk full"):
        registry.register_model_dir(models["base"], None, None, uri)
    assert statuses(uri) == ["FAILED"]
    assert client(uri).search_model_versions(f"name = '{NAME}'") == []
    monkeypatch.undo()
    record = registry.register_model_dir(models["base"], None, None, uri)
    assert record["created"] is True and statuses(uri) == ["FAILED", "FINISHED"]


def stuck_register(models: dict, uri: str, tmp_path: Path) -> subprocess.Popen:
    """A register process stopped inside its run (the run is RUNNING)."""
    started, metrics = tmp_path / "started", metrics_file(tmp_path / "m.json", 0.5, 0.0, 0.0)
    process = start_python(STUCK_REGISTER, str(models["base"]), str(metrics), uri, str(started))
    wait_for(started, process)
    assert statuses(uri) == ["RUNNING"]
    return process


def test_run_of_a_killed_register_is_marked_killed_by_the_next(models, uri, tmp_path):
    process = stuck_register(models, uri, tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert statuses(uri) == ["RUNNING"]  # nobody could close it
    begun = time.monotonic()
    record = registry.register_model_dir(models["base"], None, None, uri)
    assert time.monotonic() - begun < 60  # the kill released the store lock
    assert record["created"] is True and statuses(uri) == ["FINISHED", "KILLED"]
    [killed] = client(uri).search_runs([registry.experiment_id(client(uri), uri)], "attributes.status = 'KILLED'")
    assert killed.data.tags[runs.PID_TAG] == str(process.pid)
    assert "its process had gone" in killed.data.tags[runs.ENDED_BY_TAG]


def test_sigterm_ends_the_run_failed_before_the_process_exits(models, uri, tmp_path):
    process = stuck_register(models, uri, tmp_path)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert statuses(uri) == ["FAILED"]


def test_only_runs_of_gone_processes_are_marked(models, uri, tmp_path):
    mlflow_client = registry.mlflow_client(uri)
    experiment = registry.experiment_id(mlflow_client, uri)
    finished = subprocess.Popen(["true"])
    finished.wait()
    host = runs.socket.gethostname()
    cases = {
        "dead": {runs.PID_TAG: str(finished.pid), runs.HOST_TAG: host},
        "alive": runs.identity_tags(),
        "reused pid": {runs.PID_TAG: str(os.getpid()), runs.START_TAG: "1", runs.HOST_TAG: host},
        "other host": {runs.PID_TAG: str(finished.pid), runs.HOST_TAG: f"not-{host}"},
        "no tags": {},
    }
    ids = {case: mlflow_client.create_run(experiment, tags=tags).info.run_id for case, tags in cases.items()}
    marked = registry.mark_orphaned_runs(mlflow_client, experiment)
    assert sorted(marked) == sorted([ids["dead"], ids["reused pid"]])
    status = {case: mlflow_client.get_run(run_id).info.status for case, run_id in ids.items()}
    assert status == {
        "dead": "KILLED",
        "alive": "RUNNING",
        "reused pid": "KILLED",
        "other host": "RUNNING",
        "no tags": "RUNNING",
    }


def test_lock_held_by_another_process_waits_then_names_the_lock(uri, tmp_path, monkeypatch):
    held = tmp_path / "held"
    process = start_python(HOLD_LOCK, uri, str(held))
    try:
        wait_for(held, process)
        monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 0.5)
        with pytest.raises(MoepruneError, match=r"mlflow\.db\.lock: another registration held"):
            with store.store_lock(uri):
                pass
    finally:
        process.kill()
        process.wait(timeout=30)
    with store.store_lock(uri), store.store_lock(uri):  # free again, and re-entrant
        pass


def test_a_store_that_is_not_a_database_is_one_clear_error(tmp_path):
    (tmp_path / "mlflow.db").write_text("not a sqlite file")
    with pytest.raises(MoepruneError, match=r"mlflow\.db could not be opened \(.*file is not a database\)"):
        registry.mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
