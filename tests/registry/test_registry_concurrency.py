"""Concurrent `moeprune register` processes on one new sqlite store: no crash, one version per weights.

Each round starts 8 real processes at once, two per model, for 4 pruned children of one base that
is not registered yet (so all 8 race to register the base too). `make stress` runs 10 rounds
(MOEPRUNE_STRESS_ROUNDS=10); the suite runs 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from registry_helpers import metrics_file, model_sha, pruned_child, tiny_mixtral

from moeprune import registry

ROUNDS = int(os.environ.get("MOEPRUNE_STRESS_ROUNDS", "1"))
PROCESSES, MODELS = 8, 4
NAME = "lm-finetuned-pruned"
MOEPRUNE = str(Path(sys.executable).parent / "moeprune")
# README's "Reliability" table: (fault, inputs tested, outcome), rendered by tests/reliability_table.py.
RELIABILITY_ROWS = [
    (
        "concurrent registrations on one new sqlite MLflow store",
        f"{PROCESSES} real `moeprune register` processes at once, two per model, for {MODELS} pruned children "
        "of one base not registered yet (all race to register the base); 1 round in the suite, 10 in `make stress`",
        "every process exits 0; one base version and one version per child's weights (sha256), each child's "
        "parent the base; one run per version, all FINISHED; a later registration still works",
    ),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base and 4 pruned children (distinct weights), each with a metrics file."""
    root = tmp_path_factory.mktemp("concurrent")
    base = tiny_mixtral(root / "lm" / "finetuned")
    children = [pruned_child(base, root / f"child{i}", seed=i + 1) for i in range(MODELS + 1)]
    return {"root": root, "base": base, "children": children}


def start_register(model: Path, metrics: Path, uri: str) -> subprocess.Popen:
    command = [MOEPRUNE, "register", "--model", str(model), "--metrics", str(metrics), "--tracking-uri", uri]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_round(models: dict, store: Path) -> list[tuple[int, str]]:
    """8 registrations at once (model i % 4, one metrics file each); (exit code, stderr) per process."""
    uri = f"sqlite:///{store / 'mlflow.db'}"
    processes = []
    for i in range(PROCESSES):
        metrics = metrics_file(store / "metrics" / f"p{i}.json", metric=0.5, total=0.5)
        processes.append(start_register(models["children"][i % MODELS], metrics, uri))
    return [(p.wait(timeout=600), p.communicate()[1]) for p in processes]


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_concurrent_registrations_give_one_base_and_one_version_per_model(models, tmp_path, round_number):
    started = time.monotonic()
    results = run_round(models, tmp_path)
    seconds = time.monotonic() - started
    assert [code for code, _ in results] == [0] * PROCESSES, [err[-2000:] for _, err in results]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    versions = client(uri).search_model_versions(f"name = '{NAME}'")
    bases = [v for v in versions if v.tags["role"] == "base"]
    pruned = [v for v in versions if v.tags["role"] == "pruned"]
    assert len(bases) == 1 and bases[0].tags["weights_sha256"] == model_sha(models["base"])
    children = models["children"][:MODELS]
    assert sorted(v.tags["weights_sha256"] for v in pruned) == sorted(model_sha(c) for c in children)
    assert {v.tags["parent_version"] for v in pruned} == {str(bases[0].version)}
    runs = client(uri).search_runs([registry.experiment_id(client(uri), uri)])
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * (MODELS + 1)
    later = registry.register_model_dir(models["children"][MODELS], None, None, uri)  # the store still works
    assert later["created"] is True and later["version"] == str(MODELS + 2)
    print(f"round {round_number}: {PROCESSES} processes, {MODELS} models, {seconds:.1f} s")
