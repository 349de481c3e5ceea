"""One source of truth per method: the registries of `moeprune.catalog` and everything that lists methods.

params/models.py's accepted names, the CLI help, flows/study_plan.py's inputs per method and README's tables
are derived from the registries; these tests fail when any of them diverges (or when a declaration has
no implementation, or an implementation reads an option it does not declare).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from method_tables import BLOCKS, readme_table, render

from moeprune.catalog import Option, Registry
from moeprune.catalog.scorers import SCORERS, naee_refusal, run_needs
from moeprune.catalog.tasks import TASKS, task_prefixes, usage
from moeprune.catalog.unstructured import UNSTRUCTURED, unstructured_choices
from moeprune.cli import app
from moeprune.errors import MoepruneError
from moeprune.evaluation import tasks as task_module
from moeprune.params import models as config
from moeprune.pruning import unstructured as unstructured_module
from moeprune.scoring import SCORERS as IMPLEMENTED_SCORERS
from moeprune.stages.score import parse_options
from moeprune.testbed.presets import PRESETS

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # flows/ lives beside src/

from flows import study_plan  # noqa: E402

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; import {module}; print('imported')"


def test_the_catalogs_config_and_cli_import_without_torch() -> None:
    modules = ("moeprune.catalog.scorers", "moeprune.catalog.unstructured", "moeprune.catalog.tasks")
    for module in (*modules, "moeprune.params", "moeprune.cli"):
        done = subprocess.run(
            [sys.executable, "-c", BLOCK_TORCH.format(module=module)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and "imported" in done.stdout, f"{module}: {done.stderr[-800:]}"


def test_every_declaration_has_its_implementation() -> None:
    assert IMPLEMENTED_SCORERS is SCORERS and unstructured_module.UNSTRUCTURED_METHODS is UNSTRUCTURED
    assert task_module.TASKS is TASKS
    assert all("fn" in entry.parts for entry in SCORERS.entries())
    assert all("prune_" in entry.parts for entry in UNSTRUCTURED.entries())
    assert all("evaluate" in entry.parts for entry in TASKS.entries())


def test_config_accepts_exactly_the_registered_names() -> None:
    assert config.SCORE_METHODS == tuple(SCORERS.names())
    assert config.UNSTRUCTURED_METHODS == (*UNSTRUCTURED.names(), "none") == unstructured_choices()
    assert config.EVALUATION_TASKS == task_prefixes()
    for name in SCORERS.names():
        assert config.parse_params({"score": {"method": name}, "sweep": {"methods": [name]}}).score.method == name
    for name in unstructured_choices():
        assert config.parse_params({"prune_unstructured": {"method": name}}).prune_unstructured.method == name
    for task in TASKS.entries():
        spec = f"{task.name}:x" if task.argument else task.name
        assert config.parse_params({"evaluate": {"task": spec}}).evaluate.task == spec
    with pytest.raises(MoepruneError, match="unknown score method 'magic'"):
        config.parse_params({"score": {"method": "magic"}})


def _help(command: str, param: str) -> str:
    click_command = typer.main.get_command(app).commands[command]
    return next(p.help for p in click_command.params if p.name == param)


def test_the_cli_help_lists_every_method_task_and_option() -> None:
    assert _help("score", "method") == f"{', '.join(SCORERS.names())}."
    for entry in SCORERS.entries():
        for name in entry.options:
            assert f"{name}=" in _help("score", "option"), (entry.name, name)
        for need in run_needs(entry, {name: True for name in entry.options}):
            flag = {"calibration": "calib"}.get(need, need)
            assert entry.name in _help("score", flag), (entry.name, need)
    assert _help("prune-unstructured", "method").startswith(", ".join(UNSTRUCTURED.names()))
    assert _help("evaluate", "task").startswith(", ".join(usage(task) for task in TASKS.entries()))
    streaming = [task.name for task in TASKS.entries() if task.streams]
    assert _help("evaluate", "streaming").startswith(", ".join(streaming))


def test_the_study_plan_reads_what_each_method_needs() -> None:
    flags = {"profile": "profile", "reference": "reference", "calibration": "calib"}
    assert study_plan.METHOD_INPUTS == {e.name: tuple(flags[n] for n in e.needs) for e in SCORERS.entries()}
    language = study_plan.study_specs()[1]
    reason = study_plan.intractable(language, "naee", 0.5)
    assert language.routed_experts == PRESETS["default"].size.experts == 128
    assert reason == naee_refusal(128, 64) and "C(128, 64)" in reason
    assert study_plan.intractable(language, "stun", 0.5) is None


@pytest.mark.parametrize("block", list(BLOCKS))
def test_the_readme_tables_are_up_to_date(block: str) -> None:
    assert readme_table(block) == render(block), (
        "README.md is out of date: run `.venv/bin/python tests/method_tables.py`"
    )


def test_the_readme_command_table_lists_the_registered_names() -> None:
    text = (ROOT / "README.md").read_text()
    assert "--method " + "\\|".join(SCORERS.names()) + " " in text
    assert "--method " + "\\|".join(UNSTRUCTURED.names()) + " " in text
    assert "--task " + "\\|".join(usage(task) for task in TASKS.entries()) + " " in text


def test_scorers_read_only_declared_options() -> None:
    for path in sorted((ROOT / "src" / "moeprune" / "scoring").glob("*.py")):
        source = path.read_text()
        methods = re.findall(r'@implements\("([^"]+)"\)', source)
        for name in re.findall(r'ctx\.option\("([^"]+)"', source):
            assert methods and all(name in SCORERS.get(m).options for m in methods), f"{path.name} reads {name}"


def test_the_score_stage_checks_options_against_the_declaration() -> None:
    naee, stun = SCORERS.get("naee"), SCORERS.get("stun")
    assert parse_options(naee, {"max-combinations": "100", "progressive": "true"}) == {
        "max_combinations": 100,
        "progressive": True,
    }
    assert parse_options(stun, {"lambda2": "1", "global_budget": False}) == {"lambda2": 1.0, "global_budget": False}
    with pytest.raises(MoepruneError, match=r"has no option 'kappa'; valid options: max_combinations, progressive"):
        parse_options(naee, {"kappa": "3"})
    with pytest.raises(MoepruneError, match="has no option 'x'; valid options: none"):
        parse_options(SCORERS.get("random"), {"x": "1"})
    with pytest.raises(MoepruneError, match=r"max_combinations='lots' must be an integer"):
        parse_options(naee, {"max_combinations": "lots"})
    with pytest.raises(MoepruneError, match=r"progressive=2 must be true or false"):
        parse_options(naee, {"progressive": 2})
    with pytest.raises(MoepruneError, match="streaming option is gone"):
        parse_options(stun, {"streaming": "true"})
    for entry in SCORERS.entries():
        assert entry.parse_options(entry.defaults()) == entry.defaults()
    assert run_needs(stun, {"lambda2": 1.0}) == ("profile",) and run_needs(stun) == ()


def test_undeclared_options_and_names_are_errors() -> None:
    with pytest.raises(KeyError, match="does not declare"):
        SCORERS.get("stun").default("lambda3")
    with pytest.raises(MoepruneError, match="unknown scoring method 'magic'; valid methods: frequency"):
        SCORERS.get("magic")
    registry = Registry("thing", needs=("profile",), facts={"colour": None})
    registry.declare("a", "A", needs=("profile",), options={"n": Option(int, 1, "count")}, colour="red")
    assert registry.get("a").colour == "red" and registry.names() == ["a"] and "a" in registry
    for bad in (
        lambda: registry.declare("a", "again"),
        lambda: registry.declare("b", "B", needs=("reference",)),
        lambda: registry.declare("c", "C", size=3),
        lambda: registry.implements("zzz")(print),
    ):
        with pytest.raises(ValueError):
            bad()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("kappa=3", "error: method 'naee' has no option 'kappa'; valid options: max_combinations, progressive"),
        ("max_combinations=lots", "error: method 'naee' option max_combinations='lots' must be an integer"),
    ],
)
def test_a_bad_score_option_is_one_error_line(tmp_path: Path, option: str, message: str) -> None:
    from typer.testing import CliRunner

    from moeprune.testing import tiny_moe_model

    tiny_moe_model("mixtral").save_pretrained(tmp_path / "model")
    args = ["score", "--model", str(tmp_path / "model"), "--method", "naee", "--expert-sparsity", "0.5"]
    args += ["--calib", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "s.json"), "--option", option]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "s.json").exists()
