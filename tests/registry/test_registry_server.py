"""A down tracking server makes the register task retry, then fail with a clear message (outputs intact);
then a real `mlflow server` on 127.0.0.1: registration over HTTP, and a rerun makes no duplicate version."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from registry_helpers import metrics_file, pruned_child, tiny_mixtral

from moeprune import registry

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
NAME = "lm-finetuned-pruned"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} did not answer within {timeout} s")


def start_server(data: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [
        str(mlflow),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{data / 'mlflow.db'}",
        "--artifacts-destination",
        str(data / "artifacts"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_healthy(f"http://127.0.0.1:{port}", process)
    return process


def stop_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, 15)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    base = tiny_mixtral(root / "lm" / "finetuned")
    return {
        "root": root,
        "base": base,
        "child": pruned_child(base, root / "child", seed=1),
        "base_metrics": metrics_file(root / "metrics" / "base.json", 0.6, 0.0, 0.0),
        "metrics": metrics_file(root / "metrics" / "child.json", 0.57, 0.5),
    }


def test_down_server_retries_and_fails_then_register_over_http(models, prefect_harness, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    from prefect import flow

    from tasks.stages import register_model

    @flow
    def register_once(uri: str):
        fast = register_model.with_options(retries=2, retry_delay_seconds=0)
        return fast(str(models["child"]), str(models["metrics"]), None, uri)

    state = register_once(uri, return_state=True)  # nothing listens on the port yet
    assert state.is_failed()
    with pytest.raises(Exception, match=f"MLflow tracking server {uri} is not reachable") as error:
        state.result()
    assert "infra/mlflow_server.sh" in str(error.value)
    assert models["metrics"].is_file() and (models["child"] / "model.safetensors").is_file()
    assert not models["metrics"].with_suffix(".registry.json").exists()
    assert max(run.run_count for run in prefect_task_runs("register")) == 3  # first try + 2 retries

    server = start_server(models["root"] / "mlflow-data", port)
    try:
        base = registry.register_model_dir(models["base"], models["base_metrics"], None, uri)
        assert base["version"] == "1" and base["source"].startswith("mlflow-artifacts:")
        done = register_once(uri)
        again = register_once(uri)
        assert done["version"] == again["version"] == "2" and again["created"] is False
        assert models["metrics"].with_suffix(".registry.json").is_file()
        from mlflow import MlflowClient

        versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(f"name = '{NAME}'")
        assert sorted(int(v.version) for v in versions) == [1, 2]
        local = registry.download_version(NAME, "2", models["root"] / "download", uri)
        assert (local / "config.json").is_file() and (local / "moeprune.json").is_file()
    finally:
        stop_server(server)


def prefect_task_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)))
