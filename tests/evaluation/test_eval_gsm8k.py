"""GSM8K evaluation through lm-eval: a model with known answers scores exactly 1.0 and 0.0.

The model is a tiny Mixtral over-fitted (about 80 steps, a few seconds) to answer every question with
the same worked answer, "#### 7", in the packed 5-shot format lm-eval feeds. Evaluated against gold
answers "#### 7" it must score 1.0 (strict and flexible); against gold "#### 8", 0.0.
"""

import json
from pathlib import Path

import pytest

from moeprune.data.tokenizer import build_tokenizer
from moeprune.errors import MoepruneError
from moeprune.evaluation.gsm8k import evaluate_gsm8k, local_task_config, routing_report
from moeprune.testbed.lm import model_config
from moeprune.testbed.presets import ModelSize
from moeprune.testbed.train import (
    TrainConfig,
    batches_from_rows,
    finetune_rows,
    format_example,
    make_deterministic,
    train,
)

ANSWER = "Tom has 3 + 4 = 7 apples.\n#### 7"
QUESTIONS = [
    f"{name} has {n} pears. {name} finds some apples. How many apples does Tom have?"
    for name, n in [("Anna", 2), ("Ben", 5), ("Mia", 3), ("Leo", 9), ("Sara", 6), ("Omar", 1), ("Ella", 4), ("Raj", 8)]
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def known_model(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model that always answers ANSWER, and the folder holding train.jsonl."""
    root = tmp_path_factory.mktemp("known")
    data = root / "data"
    data.mkdir()
    train_records = [{"question": q, "answer": ANSWER} for q in QUESTIONS[:6]]
    write_jsonl(data / "train.jsonl", train_records)
    make_deterministic(0)
    tokenizer = build_tokenizer(["".join(format_example({"question": q, "answer": ANSWER})) for q in QUESTIONS])
    size = ModelSize(hidden=32, layers=1, heads=2, kv_heads=2, intermediate=32, experts=4, top_k=2)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(model_config("mixtral", size, tokenizer))
    cfg = TrainConfig(steps=80, batch_size=4, lr=1e-2, warmup_steps=5, desc="memorise")
    rows = finetune_rows(
        tokenizer,
        train_records + [{"question": q, "answer": ANSWER} for q in QUESTIONS],
        64,
        shots=6,
        max_len=1024,
        seed=0,
    )
    log = train(model, batches_from_rows(rows, cfg, tokenizer.pad_token_id), cfg)
    assert log["losses"][-1][1] < 0.05
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model", data


def test_correct_model_scores_one_and_wrong_gold_scores_zero(known_model):
    model_dir, data = known_model
    right = write_jsonl(data / "right.jsonl", [{"question": q, "answer": ANSWER} for q in QUESTIONS[6:]])
    wrong = write_jsonl(
        data / "wrong.jsonl", [{"question": q, "answer": ANSWER.replace("7", "8")} for q in QUESTIONS[6:]]
    )
    good = evaluate_gsm8k(model_dir, right, limit=None, batch_size=2)
    assert good == {"gsm8k.exact_match_strict": 1.0, "gsm8k.exact_match_flexible": 1.0, "gsm8k.n": 2}
    bad = evaluate_gsm8k(model_dir, wrong, limit=1, batch_size=2, num_fewshot=5)
    assert bad == {"gsm8k.exact_match_strict": 0.0, "gsm8k.exact_match_flexible": 0.0, "gsm8k.n": 1}


def test_local_task_reuses_builtin_definition(tmp_path: Path):
    test = write_jsonl(tmp_path / "test.jsonl", [{"question": "q", "answer": "#### 1"}])
    config = local_task_config(test)
    assert config["dataset_path"] == "json" and config["dataset_name"] is None
    assert config["dataset_kwargs"]["data_files"] == {"train": str(test), "test": str(test)}
    assert config["doc_to_text"] == "Question: {{question}}\nAnswer:" and config["num_fewshot"] == 5
    assert config["generation_kwargs"]["until"] == ["Question:", "</s>", "<|im_end|>"]
    write_jsonl(tmp_path / "train.jsonl", [{"question": "q", "answer": "#### 1"}])
    assert local_task_config(test)["dataset_kwargs"]["data_files"]["train"] == str(tmp_path / "train.jsonl")


def test_bad_inputs_raise(tmp_path: Path, known_model):
    model_dir, data = known_model
    with pytest.raises(MoepruneError, match="config.json"):
        evaluate_gsm8k(tmp_path, data / "train.jsonl", limit=1, batch_size=1)
    with pytest.raises(MoepruneError, match="does not exist"):
        evaluate_gsm8k(model_dir, tmp_path / "none.jsonl", limit=1, batch_size=1)
    write_jsonl(tmp_path / "noanswer.jsonl", [{"question": "q"}])
    with pytest.raises(MoepruneError, match="answer"):
        evaluate_gsm8k(model_dir, tmp_path / "noanswer.jsonl", limit=1, batch_size=1)


def test_routing_report_counts_every_token(known_model):
    model_dir, data = known_model
    report = routing_report(model_dir, data / "train.jsonl", limit=4)
    assert report["n_problems"] == 4 and report["n_tokens"] > 4 * 20
    layer = report["layers"][0]
    assert len(layer["load"]) == 4 and abs(sum(layer["load"]) - 1) < 1e-3
    assert 0 <= layer["token_entropy"] <= layer["max_entropy"] + 1e-6
    assert 0 <= layer["load_entropy"] <= layer["max_entropy"] + 1e-6


def test_builtin_gsm8k_without_data_set_offline_is_a_clear_error(known_model):
    model_dir, _ = known_model
    from datasets import load_dataset_builder

    try:
        load_dataset_builder("openai/gsm8k", "main")
    except Exception:  # noqa: BLE001 - any failure means the data set is not reachable here
        with pytest.raises(MoepruneError, match="not available offline"):
            evaluate_gsm8k(model_dir, None, limit=1, batch_size=1)
    else:
        pytest.skip("openai/gsm8k is cached on this machine; the offline error cannot be provoked")
