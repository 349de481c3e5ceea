"""Every MoE family the installed transformers ships is covered or refused by name, with a reason.

The families are enumerated from transformers itself: every model_type whose modeling module uses the
experts interface (`@use_experts_implementation`, read from the source, nothing heavy imported) and
that a checkpoint can name (it has a task Auto class, not only a bare backbone). A new transformers
release makes `test_every_family_is_covered_or_refused` name what is new.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moeprune.arch.families import FAMILIES
from moeprune.arch.refused import REFUSED

EXPERTS_MARKER = "use_experts_implementation"
_NOT_TASK_MAPPINGS = {"CONFIG_MAPPING_NAMES", "MODEL_MAPPING_NAMES"}


def _uses_experts_interface(module_dir: Path) -> bool:
    return any(EXPERTS_MARKER in path.read_text() for path in module_dir.glob("modeling_*.py"))


def _task_model_types() -> set[str]:
    """model_types with a task Auto class (causal LM, image-text-to-text, ...), i.e. loadable checkpoints."""
    from transformers.models.auto import modeling_auto

    names = [name for name in dir(modeling_auto) if name.endswith("_MAPPING_NAMES") and name not in _NOT_TASK_MAPPINGS]
    return {model_type for name in names for model_type in getattr(modeling_auto, name)}


@cache
def enumerate_families() -> tuple[str, ...]:
    """Every model_type of the installed transformers whose MoE blocks use the experts interface."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES, model_type_to_module_name

    models = Path(transformers.__file__).parent / "models"
    tasks = _task_model_types()
    found = [
        model_type
        for model_type in CONFIG_MAPPING_NAMES
        if model_type in tasks and _uses_experts_interface(models / model_type_to_module_name(model_type))
    ]
    return tuple(sorted(found))


def test_every_family_is_covered_or_refused():
    new = [name for name in enumerate_families() if name not in FAMILIES and name not in REFUSED]
    assert not new, f"MoE families new in this transformers: {new}; add each to arch/families.py or arch/refused.py"


def test_the_refused_table_names_only_families_transformers_ships():
    families = set(enumerate_families())
    assert len(families) >= 60, sorted(families)
    assert not set(REFUSED) & set(FAMILIES), "a family is both covered and refused"
    stale = sorted(set(REFUSED) - families)
    assert not stale, f"refused families transformers no longer ships as experts-interface MoEs: {stale}"


def test_every_covered_transformers_family_is_enumerated():
    own = {"vmoe"}  # moeprune's own model, not a transformers one
    assert set(FAMILIES) - own <= set(enumerate_families())


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_a_refusal_is_one_short_line(model_type):
    reason = REFUSED[model_type]
    assert reason and "\n" not in reason and len(reason) <= 150, reason


REFUSED_SAMPLES = ["inkling2_text", "deepseek_v4", "diffusion_gemma", "inkling2", "ernie4_5_vl_moe"]


def _config_only_dir(model_type: str, root: Path) -> Path:
    """A model directory with only the stock config of `model_type` (no weights: none may be read)."""
    from transformers import CONFIG_MAPPING

    path = root / model_type
    CONFIG_MAPPING[model_type]().save_pretrained(path)
    return path


@pytest.mark.parametrize("model_type", REFUSED_SAMPLES)
def test_inspect_refuses_an_uncovered_family_in_one_line(model_type, tmp_path):
    from moeprune.cli import app

    result = CliRunner().invoke(app, ["inspect", "--model", str(_config_only_dir(model_type, tmp_path))])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, (result.output, result.exception)
    assert lines == [f"error: MoE family '{model_type}' is not covered: {REFUSED[model_type]}"], result.stderr


def test_every_stage_that_opens_a_model_refuses_before_reading_weights(tmp_path):
    from moeprune.arch.loading import check_model_dir, load_model
    from moeprune.errors import MoepruneError

    path = _config_only_dir("deepseek_v4", tmp_path)
    for opener in (check_model_dir, load_model):
        with pytest.raises(MoepruneError, match=r"^MoE family 'deepseek_v4' is not covered: hash-routed layers"):
            opener(path)


def test_the_readme_families_table_is_up_to_date():
    from family_table import readme_table, render

    assert readme_table() == render(), "README.md is out of date: run `.venv/bin/python tests/family_table.py`"


def test_pending_families_are_refused_and_have_tiny_models():
    """families.PENDING: refused (for a stage outside arch/), never covered, round-tripped by test_arch_removal."""
    from moeprune.arch.families import PENDING
    from moeprune.testing import _family_kwargs

    for name in PENDING:
        assert name in REFUSED and name not in FAMILIES, name
        _family_kwargs(name, 8, 2)
