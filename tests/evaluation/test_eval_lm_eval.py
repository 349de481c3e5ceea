"""`--task lm-eval:NAME[+NAME...]`: the user's task YAMLs through lm-eval, numbers equal to lm-eval's own.

Two local tasks on the project's GSM8K-schema problems (a JSONL read with `dataset_path: json`): a
multiple-choice task (the right answer among three numbers) and a generation task (greedy, exact match
with and without a number-extracting filter), run through the CLI and through `simple_evaluate`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import save_tiny_lm, write_gsm8k_jsonl
from typer.testing import CliRunner

from moeprune.cli import app
from moeprune.evaluation.lm_eval_tasks import flat_metrics
from moeprune.params import PromoteSection
from moeprune.registry.promotion import Candidate, decide_promotion
from moeprune.registry.versions import read_metrics

runner = CliRunner()
LIMIT, BATCH = 4, 2

MC_YAML = """task: my_mc
dataset_path: json
dataset_kwargs: {{data_files: {{test: "{data}"}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{[answer.split('#### ')[-1], '0', '100']}}}}"
doc_to_target: 0
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
"""

GEN_YAML = """task: my_gen
dataset_path: json
dataset_kwargs: {{data_files: {{test: "{data}"}}}}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer.split('#### ')[-1]}}}}"
generation_kwargs: {{until: ["Question:"], do_sample: false, max_gen_toks: 6}}
metric_list: [{{metric: exact_match}}]
filter_list:
  - {{name: none, filter: [{{function: take_first}}]}}
  - name: last-number
    filter: [{{function: regex, regex_pattern: "(\\\\d+)", group_select: -1}}, {{function: take_first}}]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny LM and a folder of two task YAMLs over a local JSONL."""
    root = tmp_path_factory.mktemp("lm_eval")
    model = save_tiny_lm(root / "model", max_position_embeddings=1024)
    data = write_gsm8k_jsonl(root / "test.jsonl", count=6)
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "my_mc.yaml").write_text(MC_YAML.format(data=data))
    (tasks / "my_gen.yaml").write_text(GEN_YAML.format(data=data))
    return model, tasks


def cli(*args: str):
    return runner.invoke(app, ["evaluate", *args])


def test_cli_numbers_equal_lm_evals_own(setup, tmp_path):
    model, tasks = setup
    out = tmp_path / "m.json"
    result = cli("--model", str(model), "--task", "lm-eval:my_mc+my_gen", "--include-path", str(tasks),
                 "--limit", str(LIMIT), "--batch-size", str(BATCH), "--device", "cpu", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    own = simple_evaluate(model="hf", model_args=f"pretrained={model.resolve()},dtype=float32",
                          tasks=["my_mc", "my_gen"], batch_size=BATCH, limit=LIMIT, device="cpu",
                          task_manager=TaskManager(include_path=str(tasks)), log_samples=False)  # fmt: skip
    expected = {
        "my_mc.acc": own["results"]["my_mc"]["acc,none"],
        "my_mc.acc_norm": own["results"]["my_mc"]["acc_norm,none"],
        "my_gen.exact_match": own["results"]["my_gen"]["exact_match,none"],
        "my_gen.exact_match.last-number": own["results"]["my_gen"]["exact_match,last-number"],
        "my_mc.n": LIMIT,
        "my_gen.n": LIMIT,
    }
    assert {key: metrics[key] for key in expected} == expected
    assert metrics["my_mc.acc_stderr"] == own["results"]["my_mc"]["acc_stderr,none"]
    assert metrics["total_sparsity"] == 0.0 and "active_params_per_token" in metrics  # the sparsity accounting
    assert not any("," in key for key in metrics)


def test_flat_metric_names():
    results = {
        "results": {
            "t": {
                "alias": "t",
                "sample_len": 9,
                "acc,none": 0.5,
                "acc_stderr,none": "N/A",
                "exact_match,strict-match": 1,
            }
        },
        "n-samples": {"t": {"original": 9, "effective": 3}},
    }
    assert flat_metrics(results) == {"t.acc": 0.5, "t.exact_match.strict-match": 1.0, "t.n": 3}
    results["results"]["t"] = {"pass@1,create_test": 0.25}
    assert flat_metrics(results) == {"t.pass_at_1.create_test": 0.25, "t.n": 3}  # a name MLflow accepts


def test_missing_backend_is_one_error_line(setup, tmp_path):
    model, tasks = setup
    result = cli("--model", str(model), "--task", "lm-eval:my_mc", "--include-path", str(tasks),
                 "--backend", "vllm", "--out", str(tmp_path / "m.json"))  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "vllm" in lines[0] and "--backend hf" in lines[0]
    assert not (tmp_path / "m.json").exists()


def test_unknown_task_is_one_error_line(setup, tmp_path):
    model, tasks = setup
    result = cli("--model", str(model), "--task", "lm-eval:my_mc+no_such_task", "--include-path", str(tasks),
                 "--out", str(tmp_path / "m.json"))  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "'no_such_task'" in lines[0] and "--include-path" in lines[0]


def test_promotion_accepts_an_lm_eval_metric():
    policy = PromoteSection(metric="my_mc.acc", min_retention=0.9)
    base = Candidate(1, "base", read_metrics({"my_mc.acc": 0.5, "total_sparsity": 0.0}), [])
    pruned = Candidate(2, "pruned", read_metrics({"my_mc.acc": 0.48, "total_sparsity": 0.3}), [])
    decision = decide_promotion([base, pruned], policy, "m")
    assert decision.champion == 2 and decision.metric == "my_mc.acc"


def test_report_tabulates_lm_eval_metrics():
    from moeprune.report.markdown import metric_value
    from moeprune.report.rows import Row, detect_metrics, is_percent

    values = {"my_mc.acc": 0.5, "my_mc.acc_stderr": 0.1, "my_mc.n": 4.0, "my_gen.exact_match.last-number": 0.25}
    rows = [Row(group="m", label="base", kind="base", column=0.0, values={**values, "total_sparsity": 0.0})]
    assert detect_metrics(rows) == ("my_gen.exact_match.last-number", "my_mc.acc")
    assert is_percent("my_mc.acc") and not is_percent("my_mc.acc_stderr") and not is_percent("perplexity")
    assert metric_value("my_mc.acc", 0.5) == "50.0"
    gsm8k = [Row(group="m", label="base", kind="base", column=0.0, values={**values, "gsm8k.exact_match_strict": 1})]
    assert detect_metrics(gsm8k) == ("gsm8k.exact_match_strict", "gsm8k.exact_match_flexible")


def test_params_accept_lm_eval_tasks_and_metrics():
    from moeprune.errors import MoepruneError
    from moeprune.params import parse_params

    evaluate = {"task": "lm-eval:my_mc+my_gen", "lm_eval": {"backend": "hf", "include-path": "tasks"}}
    params = parse_params({"evaluate": evaluate, "promote": {"metric": "my_mc.acc"}})
    assert params.evaluate.lm_eval.include_path == "tasks" and params.promote.metric == "my_mc.acc"
    with pytest.raises(MoepruneError, match="evaluate.lm_eval.backend: unknown lm-eval backend 'tgi'"):
        parse_params({"evaluate": {"lm_eval": {"backend": "tgi"}}})


def test_lm_eval_given_twice_is_refused():
    from moeprune.errors import MoepruneError
    from moeprune.evaluation.tasks import parse_tasks

    with pytest.raises(MoepruneError, match=r"one `lm-eval:A\+B`"):
        parse_tasks("lm-eval:my_mc,lm-eval:my_gen")
