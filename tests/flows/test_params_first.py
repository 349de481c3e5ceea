"""params.yaml is validated before any work: by the first command of every DVC stage and by every flow.

A misspelt key under `score:` (`expert_sparsty: 0.25` beside the old `expert_sparsity: 0.5`, which DVC
would otherwise run with) stops `dvc repro` at the first stage it runs, with one `error:` line naming
the key and the file, before that stage writes anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moeprune.errors import MoepruneError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # flows/ and tasks/ live beside src/
CHECK = "moeprune check-params --params params.yaml"
SCRIPTS = Path(sys.executable).parent
# README's "Reliability" table: (fault, inputs tested, outcome), rendered by tests/reliability_table.py.
RELIABILITY_ROWS = [
    (
        "misspelt params.yaml key beside the real one",
        "`score.expert_sparsty: 0.25` under `dvc repro`, `moeprune check-params` and the pipeline, sweep, "
        "promote and demo flows",
        "every DVC stage runs `moeprune check-params` first: `dvc repro` stops at the first stage with one "
        "`error:` line naming the file and the key, before anything is written; every flow fails before any work",
    ),
]


def misspelt(folder: Path, source: Path = ROOT / "params.yaml") -> Path:
    """A copy of `source` in `folder` whose `score:` has a misspelt key, `expert_sparsty: 0.25`."""
    params = yaml.safe_load(source.read_text())
    params["score"]["expert_sparsty"] = 0.25
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{SCRIPTS}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("dvc_yaml", ["dvc.yaml", "pipelines/vision/dvc.yaml"])
def test_every_dvc_stage_validates_params_first(dvc_yaml):
    stages = yaml.safe_load((ROOT / dvc_yaml).read_text())["stages"]
    assert stages, "no stages"
    for name, stage in stages.items():
        assert isinstance(stage["cmd"], list) and stage["cmd"][0] == CHECK, name
        assert all(CHECK not in command for command in stage["cmd"][1:]), name


def test_check_params_prints_one_error_line_naming_key_and_file(tmp_path):
    bad = misspelt(tmp_path)
    result = run([str(SCRIPTS / "moeprune"), "check-params", "--params", str(bad)], tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {bad}: score.expert_sparsty: unknown key")
    good = run([str(SCRIPTS / "moeprune"), "check-params", "--params", str(ROOT / "params.yaml")], tmp_path)
    assert good.returncode == 0 and good.stderr == ""


def test_dvc_repro_stops_at_the_first_stage_before_it_writes(tmp_path):
    repo = tmp_path / "repo"
    misspelt(repo)
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    assert run(["git", "init", "-q"], repo).returncode == 0
    assert run([sys.executable, "-m", "dvc", "init", "-q"], repo).returncode == 0
    result = run([sys.executable, "-m", "dvc", "repro"], repo)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Running stage 'testbed'" in output and "Running stage 'calibrate'" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: params.yaml: score.expert_sparsty: unknown key")
    assert not (repo / "runs").exists()


@pytest.fixture
def forbid_work(monkeypatch):
    """Make every flow's first piece of work fail the test if it is reached."""

    def reached(*args, **kwargs):
        raise AssertionError("work started before params.yaml was validated")

    import flows.demo
    import flows.pipeline
    import flows.promote
    import flows.sweep

    monkeypatch.setattr(flows.pipeline, "STAGE_TASKS", {stage: reached for stage in flows.pipeline.STAGE_TASKS})
    monkeypatch.setattr(flows.pipeline, "get_run_logger", reached)
    monkeypatch.setattr(flows.sweep, "existing_experiments", reached)
    monkeypatch.setattr(flows.promote, "promote_models", reached)
    monkeypatch.setattr(flows.demo, "pipeline", reached)
    monkeypatch.setattr(flows.demo, "sweep", reached)
    return flows


def test_pipeline_and_sweep_flows_validate_first(tmp_path, forbid_work):
    misspelt(tmp_path)
    with pytest.raises(MoepruneError, match="params.yaml: score.expert_sparsty: unknown key"):
        forbid_work.pipeline.pipeline.fn(root=str(tmp_path))
    with pytest.raises(MoepruneError, match="params.yaml: score.expert_sparsty: unknown key"):
        forbid_work.sweep.sweep(root=str(tmp_path))


def test_promote_flow_validates_first(tmp_path, forbid_work):
    with pytest.raises(MoepruneError, match="score.expert_sparsty: unknown key"):
        forbid_work.promote.promote.fn(params=str(misspelt(tmp_path)))


def test_demo_validates_every_chain_before_the_first(tmp_path, forbid_work):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")  # the LM chain is fine
    misspelt(tmp_path / "pipelines" / "vision", ROOT / "pipelines" / "vision" / "params.yaml")
    with pytest.raises(MoepruneError, match="vision/params.yaml: score.expert_sparsty: unknown key"):
        forbid_work.demo.demo.fn(root=str(tmp_path))
