"""The evaluate stage: task dispatch, merged flat metrics with sparsity figures, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import save_tiny_lm, save_tiny_vision, write_gsm8k_jsonl

from moeprune.errors import MoepruneError
from moeprune.evaluation.perplexity import evaluate_perplexity
from moeprune.evaluation.tasks import TASKS, parse_task, parse_tasks
from moeprune.params import EvaluateSection, from_flags
from moeprune.stages import evaluate

SPARSITY_KEYS = (
    "expert_sparsity",
    "weight_sparsity",
    "total_sparsity",
    "params",
    "nonzero_params",
    "active_params_per_token",
    "size_bytes",
    "experts_per_layer",
)


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    """A tiny LM whose context holds lm-eval's 5-shot GSM8K prompt."""
    return save_tiny_lm(tmp_path_factory.mktemp("eval") / "model", max_position_embeddings=1024)


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    return write_gsm8k_jsonl(tmp_path_factory.mktemp("eval_data") / "test.jsonl", count=8)


def test_tasks_merge_into_one_flat_json(lm, problems, tmp_path):
    task = f"gsm8k-local:{problems},perplexity:{problems}"
    result = evaluate.run(lm, tmp_path / "metrics.json", EvaluateSection(task=task, limit=1, batch_size=2))
    assert json.loads((tmp_path / "metrics.json").read_text()) == result
    assert result["task"] == task and result["model"] == str(lm)
    assert result["gsm8k.n"] == 1 and 0.0 <= result["gsm8k.exact_match_strict"] <= 1.0
    assert 0.0 <= result["gsm8k.exact_match_flexible"] <= 1.0
    direct = evaluate_perplexity(lm, problems, limit=1, batch_size=2)
    assert result["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-6)
    assert result["perplexity.tokens"] == direct["perplexity.tokens"]
    assert all(key in result for key in SPARSITY_KEYS)
    assert (result["expert_sparsity"], result["total_sparsity"], result["experts_per_layer"]) == (0.0, 0.0, [8, 8])
    assert result["seconds"] > 0
    assert all(not isinstance(v, dict) for v in result.values())  # flat


def test_imagenet_task_on_a_vision_moe(tmp_path):
    model, images = save_tiny_vision(tmp_path)
    result = evaluate.run(
        model, tmp_path / "m.json", EvaluateSection(task=f"imagenet:{images}", limit=None, batch_size=3)
    )
    assert result["imagenet.n"] == 8
    assert 0.0 <= result["imagenet.top1"] <= result["imagenet.top5"] == 1.0  # 2 classes: top-5 holds both
    assert result["experts_per_layer"] == [4] and result["expert_sparsity"] == 0.0


def test_parse_task_forms(problems):
    assert parse_task("gsm8k") == (TASKS["gsm8k"], None)
    assert parse_task(f"perplexity:{problems}") == (TASKS["perplexity"], problems)
    assert [t.name for t, _ in parse_tasks(f"gsm8k-local:{problems}, perplexity:{problems}")] == [
        "gsm8k-local",
        "perplexity",
    ]


def _bad_tasks(problems: Path, tmp_path: Path) -> dict[str, str]:
    return {  # task string: words the message must hold
        "mmlu": "valid tasks: gsm8k, gsm8k-local:PATH, perplexity:PATH, imagenet:DIR",
        f"perplexity:{tmp_path / 'missing.txt'}": "does not exist",
        "perplexity": "needs a PATH",
        "gsm8k:extra": "takes no argument",
        f"gsm8k,gsm8k-local:{problems}": "both write the 'gsm8k.*' metrics",
        f"perplexity:{problems},imagenet:{tmp_path / 'nowhere'}": "does not exist",
        " , ": "no evaluation task given",
    }


def test_bad_tasks_raise_and_write_nothing(lm, problems, tmp_path):
    out = tmp_path / "out" / "metrics.json"
    for task, message in _bad_tasks(problems, tmp_path).items():
        with pytest.raises(MoepruneError) as error:  # an unknown task name: the params model; the rest: the stage
            evaluate.run(lm, out, from_flags(EvaluateSection, task=task))
        assert message in str(error.value), task
        assert not out.parent.exists() or not any(out.parent.iterdir()), task


def test_bad_model_limit_and_batch_size(lm, problems, tmp_path):
    out = tmp_path / "metrics.json"
    with pytest.raises(MoepruneError, match="does not exist"):
        evaluate.run(tmp_path / "no_model", out, EvaluateSection(task=f"perplexity:{problems}"))
    with pytest.raises(MoepruneError, match="--limit: Input should be greater than 0"):
        from_flags(EvaluateSection, task=f"perplexity:{problems}", limit=0)
    with pytest.raises(MoepruneError, match="--batch-size: Input should be greater than 0"):
        from_flags(EvaluateSection, task=f"perplexity:{problems}", batch_size=0)
    assert not out.exists()
