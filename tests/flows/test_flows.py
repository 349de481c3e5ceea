"""The orchestrated pipeline with the real tools, on the quick LM testbed in one temporary git + DVC repo.

In order (the tests share the module's repository and MLflow sqlite store):
1. the `pipeline` flow with the tracking server down: every DVC stage runs, registration retries and
   fails with a clear message; rerun with the sqlite store: every stage is skipped, base and pruned
   model are registered and the results table is published as a Prefect artifact;
2. a params change: `dvc status` names only the stages after expert pruning, `dvc repro` reruns only
   them, `dvc metrics show` lists the metrics;
3. `python -m flows.sweep`'s function (what `moeprune sweep` runs): a 2-point grid as `dvc exp run -S`
   experiments on a Dask LocalCluster through prefect-dask; no model is registered twice;
4. the promote flow as a deployment with a cron schedule, one run executed by a runner (dry run);
5. `moeprune serve`'s deployments and infra/prefect.yaml agree with params.yaml; the CLI doors run the flows.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # flows/ and tasks/ live beside src/
STAGES = ("testbed", "calibrate", "profile", "score", "prune_experts", "prune_unstructured")
SWEEP = {
    "methods": ["router-change"],
    "expert_sparsity": [0.5],
    "unstructured_methods": ["none", "magnitude"],
    "total_sparsity": [0.7],
    "max_workers": 2,
}
POINTS = {"lm-router-change-e50-none", "lm-router-change-e50-magnitude-t70"}


def run(command: list[str], cwd: Path) -> str:
    """Run a command with the venv's scripts first on PATH; fail the test with its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def dvc(repo: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], repo)


def git_commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def write_quick_params(repo: Path) -> None:
    """params.yaml with the quick testbed, tiny calibration/evaluation, a sqlite store in the repo."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["testbed"]["options"]["quick"] = True
    params["calibrate"].update(samples=8, seq_len=64)
    params["evaluate"].update(limit=4, batch_size=4)
    params["prune_unstructured"] = {"method": "magnitude", "options": {"total-sparsity": 0.6}}
    params["score"].update(method="router-change", expert_sparsity=0.5)
    params["registry"]["tracking_uri"] = f"sqlite:///{repo / 'mlflow.db'}"
    params["sweep"] = SWEEP
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def read_artifact(key: str, flow_run_id=None) -> str:
    """The newest markdown artifact with this key (of one flow run when given), read through the API."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    artifact_filter = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
    if flow_run_id is not None:
        artifact_filter.flow_run_id = ArtifactFilterFlowRunId(any_=[flow_run_id])
    with prefect_client() as client:
        artifacts = client.read_artifacts(artifact_filter=artifact_filter)
    assert artifacts, f"no artifact {key}"
    return max(artifacts, key=lambda a: a.created).data


def model_name(repo: Path) -> str:
    """The registered model's name, as the register stage recorded it."""
    return json.loads((repo / "metrics" / "lm" / "pruned.registry.json").read_text())["name"]


def registry_versions(repo: Path) -> list:
    from mlflow import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client.search_model_versions(f"name = '{model_name(repo)}'")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh git + DVC repository holding dvc.yaml and quick params (no flows/: found in the checkout)."""
    repo = tmp_path_factory.mktemp("flowrepo")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    write_quick_params(repo)
    (repo / ".gitignore").write_text("runs/\nmlruns/\nmlflow.db\n.prefect/\n")
    run(["git", "init", "-q"], repo)
    dvc(repo, "init", "-q")
    git_commit(repo, "init")
    return repo


@pytest.fixture(scope="module")
def pipeline_runs(repo, prefect_harness):
    """The pipeline flow twice: with a tracking server that is down, then with the sqlite store."""
    from flows.pipeline import pipeline
    from tasks.stages import register_model

    down = f"http://127.0.0.1:{free_port()}"
    fast_retries = register_model.with_options(retries=1, retry_delay_seconds=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("flows.pipeline.register_model", fast_retries)
        failed = pipeline(root=str(repo), tracking_uri=down, return_state=True)
    rerun = pipeline(root=str(repo))
    return {"failed": failed, "rerun": rerun, "down": down}


def test_pipeline_flow_retries_register_then_rerun_completes(repo, pipeline_runs):
    failed = pipeline_runs["failed"]
    assert failed.is_failed()
    with pytest.raises(Exception, match=f"MLflow tracking server {pipeline_runs['down']} is not reachable"):
        failed.result()
    with prefect_client() as client:
        runs = [r for r in client.read_task_runs() if r.flow_run_id == failed.state_details.flow_run_id]
    assert {f"dvc repro {stage}" for stage in STAGES} <= {r.name for r in runs if r.state.is_completed()}
    assert [r.run_count for r in runs if r.name.startswith("register")] == [2]  # first try + 1 retry

    rerun = pipeline_runs["rerun"]
    redone = {stage: ran for stage, ran in rerun["ran"].items() if stage != "report"}
    assert all(ran == [] for ran in redone.values()), rerun["ran"]  # outputs intact: nothing redone
    assert rerun["ran"]["report"], "the report stage runs once registration has succeeded"
    assert rerun["registered"]["base"]["version"] == "1" and rerun["registered"]["pruned"]["version"] == "2"
    assert sorted(int(v.version) for v in registry_versions(repo)) == [1, 2]  # no duplicate


def test_results_table_artifact_and_clean_dvc_status(repo, pipeline_runs):
    table = read_artifact("moeprune-results-lm")
    assert table == pipeline_runs["rerun"]["table"]
    lines = table.splitlines()
    assert lines[0].startswith("| model | version | gsm8k.exact_match_strict | expert_sparsity")
    pruned = json.loads((repo / "metrics" / "lm" / "pruned.json").read_text())
    assert lines[3].startswith(f"| pruned | 2 | {pruned['gsm8k.exact_match_strict']:.4f} | 0.5000 |")
    assert pruned["total_sparsity"] == pytest.approx(0.6, abs=0.02)
    assert json.loads(dvc(repo, "status", "--json")) == {}  # the register stage was committed too


def test_params_change_reruns_only_downstream_stages(repo, pipeline_runs):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prune_unstructured"]["options"]["total-sparsity"] = 0.7
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(json.loads(dvc(repo, "status", "--json"))) == {"prune_unstructured"}  # its params changed
    output = dvc(repo, "repro")
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    assert ran == {"prune_unstructured", "evaluate_pruned", "register", "report"}, output
    shown = json.loads(dvc(repo, "metrics", "show", "--json"))
    metrics = json.dumps(shown)
    assert "gsm8k.exact_match_strict" in metrics and "metrics/lm/pruned.json" in metrics
    pruned = json.loads((repo / "metrics" / "lm" / "pruned.json").read_text())
    assert pruned["total_sparsity"] == pytest.approx(0.7, abs=0.02)
    git_commit(repo, "total sparsity 0.7")


@pytest.fixture(scope="module")
def dask_address():
    """An in-process Dask cluster: one worker, two threads (each sweep point is a `dvc` subprocess)."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_sweep_runs_grid_as_dvc_experiments_on_dask(repo, pipeline_runs, dask_address):
    from flows.sweep import sweep_params_file

    results = sweep_params_file(params=repo / "params.yaml", dask_address=dask_address)
    assert {r["name"] for r in results} == POINTS and all(r["ok"] for r in results)
    table = read_artifact("moeprune-sweep")
    assert all(f"| {name} | True |" in table for name in POINTS)
    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    experiments = experiment_metrics(shown)
    assert set(experiments) == POINTS
    expert_only = experiments["lm-router-change-e50-none"]
    assert expert_only["expert_sparsity"] == 0.5 and expert_only["weight_sparsity"] == 0.0
    assert 0.3 < expert_only["total_sparsity"] < 0.5  # experts are most, not all, of the weights
    assert experiments["lm-router-change-e50-magnitude-t70"]["total_sparsity"] == pytest.approx(0.7, abs=0.02)
    versions = registry_versions(repo)
    shas = [v.tags["weights_sha256"] for v in versions]
    assert len(shas) == len(set(shas)) == 4  # base, 0.6, 0.7 (found again by the sweep), expert-only
    assert [v.tags["role"] for v in versions].count("base") == 1


def experiment_metrics(shown: list) -> dict[str, dict]:
    """`dvc exp show --json` -> {experiment name: pruned metrics}."""
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for revision in experiment.get("revs", []):
                metrics = (revision.get("data") or {}).get("metrics", {})
                pruned = metrics.get("metrics/lm/pruned.json", {}).get("data")
                if revision.get("name") and pruned:
                    found[revision["name"]] = pruned
    return found


def test_cron_deployment_of_promote_runs_once_on_a_runner(repo, pipeline_runs, monkeypatch):
    from prefect.deployments import run_deployment
    from prefect.runner import Runner

    from flows.promote import promote

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(ROOT)  # the flow's entrypoint is flows/promote.py:promote
    runner = Runner(name="moeprune-test-runner", query_seconds=1)
    parameters = {"params": str(repo / "params.yaml"), "dry_run": True}
    runner.add_flow(promote, name="promote-after-sweep", cron="0 6 * * *", parameters=parameters)
    with prefect_client() as client:
        deployment = client.read_deployment_by_name("moeprune-promote/promote-after-sweep")
    assert deployment.schedules[0].schedule.cron == "0 6 * * *"

    flow_run = run_deployment("moeprune-promote/promote-after-sweep", timeout=0)
    asyncio.run(runner.start(run_once=True))
    with prefect_client() as client:
        state = client.read_flow_run(flow_run.id).state
    assert state.is_completed(), state
    decisions = read_artifact("moeprune-promotion", flow_run.id)
    assert decisions.startswith("# Promotion (dry run)") and model_name(repo) in decisions
    from mlflow import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    assert MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model(model_name(repo)).aliases == {}


def test_serve_deployments_match_params_and_infra_yaml():
    from flows.deployments import build_deployments
    from moeprune.params import load_params

    params = load_params(ROOT / "params.yaml")
    deployments = {d.name: d for d in build_deployments(params, str(ROOT), str(ROOT / "params.yaml"))}
    assert set(deployments) == {"nightly-sweep", "promote-after-sweep"}
    crons = {name: d.schedules[0].schedule.cron for name, d in deployments.items()}
    assert crons == {"nightly-sweep": params.schedules.sweep, "promote-after-sweep": params.schedules.promote}
    assert deployments["promote-after-sweep"].parameters == {"params": str(ROOT / "params.yaml")}
    declared = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())["deployments"]
    infra = {d["name"]: d["schedules"][0]["cron"] for d in declared if d.get("schedules")}
    assert infra == crons


def test_cli_doors_of_sweep_and_serve(tmp_path):
    from typer.testing import CliRunner

    from moeprune.cli import app

    for command, flag in (("sweep", "--dask-address"), ("serve", "--params")):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and flag in result.output
        assert flag in run([sys.executable, "-m", f"flows.{command}", "--help"], ROOT)
    bad = tmp_path / "params.yaml"
    bad.write_text("kind: lm\nnot_a_section: 1\n")
    for command in ("sweep", "serve"):  # `moeprune X` runs `python -m flows.X`: its error line and status
        child = [sys.executable, "-m", "moeprune.cli", command, "--params", str(bad)]
        result = subprocess.run(child, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert result.returncode == 1 and result.stderr.startswith("error: "), result.stderr
        assert result.stderr.count("\n") == 1 and str(bad) in result.stderr
