"""tasks/commands.py builds every stage's command line; dvc.yaml must run exactly those commands.

dvc.yaml keeps its `${...}` commands (DVC tracks the parameters through them). Each test here renders
dvc.yaml with DVC's own resolver for a params.yaml (the repository's, the vision chain's, and one that
sets every option) and checks that every stage's commands equal `pipeline_commands(params)`, and that
the files it declares are `PipelineFiles`'. The study's commands come from the same builder; they must
parse with the real `moeprune` CLI.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # flows/ and tasks/ live beside src/

from moeprune.params import load_params  # noqa: E402
from tasks import commands  # noqa: E402
from tasks.commands import PipelineFiles, option_flags, pipeline_commands  # noqa: E402

EVERY_OPTION = {
    "kind": "lm",
    "device": "cpu",
    "testbed": {"out": "tb", "options": {"preset": "mixtral-8x", "family": "olmoe", "seed": 3, "quick": True}},
    "model": {"path": "mine/ft", "reference": "mine/pt", "data": "mine/data"},  # dvc.yaml quotes no scalar
    "calibrate": {"source": "text:mine/data/c.txt", "samples": 5, "seq_len": 33, "seed": 2},
    "profile": {"streaming": True},
    "score": {"method": "stun", "expert_sparsity": 0.125, "seed": 7},
    "prune_unstructured": {
        "method": "sparsegpt",
        "options": {
            "sparsity": 0.5,
            "owl": True,
            "targets": "experts",
            "calibrate-all-experts": True,
            "streaming": True,
            "batch-size": 4,
        },
    },
    "evaluate": {
        "task": "lm-eval:arc_easy+hellaswag",
        "limit": 9,
        "batch_size": 3,
        "lm_eval": {"backend": "vllm", "include-path": "my tasks/"},
    },
    "registry": {"tracking_uri": None, "model_name": "x"},
    "promote": {"metric": "arc_easy.acc"},
}
# --nm cannot be combined with --owl (its sparsity is 1 - N/M): the option that the case above cannot set
NM_PATTERN = {**EVERY_OPTION, "prune_unstructured": {"method": "wanda", "options": {"nm": "2:4"}}}


def rendered_stages(folder: Path, params: dict | None = None, params_file: Path | None = None) -> dict:
    """`{stage: DVC stage}` of the repository's dvc.yaml rendered with a params file, in a scratch repo."""
    from dvc.repo import Repo

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    text = params_file.read_text() if params_file else yaml.safe_dump(params, sort_keys=False)
    (folder / "params.yaml").write_text(text)
    Repo.init(str(folder), no_scm=True)
    with Repo(str(folder)) as repo:
        return {stage.name: stage for stage in repo.index.stages}


CASES = {
    "params.yaml": lambda tmp: rendered_stages(tmp, params_file=ROOT / "params.yaml"),
    "pipelines/vision/params.yaml": lambda tmp: rendered_stages(
        tmp, params_file=ROOT / "pipelines" / "vision" / "params.yaml"
    ),
    "every option set": lambda tmp: rendered_stages(tmp, params=EVERY_OPTION),
    "an N:M pattern": lambda tmp: rendered_stages(tmp, params=NM_PATTERN),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dvc_yaml_runs_exactly_the_built_commands(case, tmp_path):
    stages = CASES[case](tmp_path)
    built = pipeline_commands(load_params(tmp_path / "params.yaml"))
    assert list(stages) == list(built)
    for name, stage in stages.items():
        assert [shlex.split(command) for command in stage.cmd] == [["moeprune", *argv] for argv in built[name]], name


@pytest.mark.parametrize("case", list(CASES))
def test_dvc_yaml_declares_the_files_the_builder_names(case, tmp_path):
    stages = CASES[case](tmp_path)
    files = PipelineFiles(load_params(tmp_path / "params.yaml").kind)
    outs = {str(out.def_path) for stage in stages.values() for out in stage.outs}
    expected = {files.calib, files.profile, files.scores, files.experts_pruned, files.pruned, files.report}
    assert {str(path) for path in expected} | {str(files.base_metrics), str(files.pruned_metrics)} <= outs


def test_the_every_option_case_really_sets_every_option():
    argv = [arg for stage in pipeline_commands(load_params_dict(EVERY_OPTION)).values() for a in stage for arg in a]
    flags = ("--preset", "--family", "--quick", "--streaming", "--sparsity", "--owl", "--include-path", "--targets")
    for flag in (*flags, "--calibrate-all-experts", "--batch-size"):
        assert flag in argv, flag
    assert "my tasks/" in argv and "--total-sparsity" not in argv
    nm = pipeline_commands(load_params_dict(NM_PATTERN))["prune_unstructured"]
    assert ["--nm", "2:4"] == [arg for argv in nm for arg in argv if arg in ("--nm", "2:4")]


def load_params_dict(data: dict):
    from moeprune.params import parse_params

    return parse_params(data)


def test_option_flags_unpack_like_dvc():
    assert option_flags({"seed": 0, "quick": True, "owl": False, "nm": "2:4", "x": None}) == [
        "--seed",
        "0",
        "--quick",
        "--nm",
        "2:4",
    ]
    assert option_flags({"sizes": [1, 2]}) == ["--sizes", "1", "2"]
    assert option_flags({}) == []


def test_optional_flags_are_left_out_and_shell_quotes():
    argv = commands.evaluate("m", "gsm8k", "o.json")
    assert argv == ["evaluate", "--model", "m", "--task", "gsm8k", "--out", "o.json"]
    argv = commands.score("m", "router-change", 0.5, 0, "s.json", reference=Path("ref"))
    assert argv[argv.index("--reference") + 1] == "ref" and "--profile" not in argv and "--device" not in argv
    assert commands.shell(["calibrate", "--source", "text:a b"]) == "moeprune calibrate --source 'text:a b'"
    assert commands.register("m", "x.json", tracking_uri="sqlite:///db") == [
        "register",
        "--model",
        "m",
        "--metrics",
        "x.json",
        "--tracking-uri",
        "sqlite:///db",
    ]


def study_argvs(root: Path) -> list[list[str]]:
    """Every command both variants of the study plan make."""
    from flows.study_plan import (
        Layout,
        preparation_commands,
        register_command,
        study_points,
        study_specs,
        testbed_command,
    )

    argvs = []
    for quick in (False, True):
        for spec in study_specs(quick):
            layout = Layout(root, spec)
            argvs += [testbed_command(layout, quick), *preparation_commands(layout)]
            for point in study_points(layout):
                argvs += [*point.build, point.evaluate, register_command(point.model_dir, point.metrics, "sqlite://")]
    return argvs


def test_every_study_command_parses_with_the_moeprune_cli(tmp_path):
    import typer

    from moeprune.cli import app

    group = typer.main.get_command(app)
    argvs = study_argvs(tmp_path)
    assert {argv[0] for argv in argvs} == {
        "testbed",
        "calibrate",
        "profile",
        "score",
        "prune-experts",
        "prune-unstructured",
        "evaluate",
        "register",
    }
    for argv in argvs:
        command = group.get_command(None, argv[0])
        command.make_context(argv[0], list(argv[1:]))  # raises on an unknown flag or a bad value


def test_the_pipeline_flow_registers_the_files_dvc_yaml_writes(tmp_path):
    from flows.pipeline import pipeline_paths

    files = PipelineFiles("vision")
    paths = pipeline_paths(tmp_path, "vision", "runs/testbed/vision/finetuned")
    assert paths["base"] == (tmp_path / "runs/testbed/vision/finetuned", tmp_path / files.base_metrics)
    assert paths["pruned"] == (tmp_path / files.pruned, tmp_path / files.pruned_metrics)
