"""GSM8K-format generator, pretraining mixture and testbed tokenizer."""

import json
import random
import re
from pathlib import Path

import pytest

from moeprune.data.gsm8k_gen import generate_problems, read_jsonl, write_splits
from moeprune.data.text_mix import generate_documents, write_pretrain_text
from moeprune.data.tokenizer import build_tokenizer
from moeprune.errors import MoepruneError
from moeprune.evaluation.gsm8k import builtin_gsm8k_yaml
from moeprune.testbed.train import encode_with_mask, pack_fewshot

STEP = re.compile(r"(-?\d+) ([-+*/]) (\d+) = (?:<<[^>]*>>)?(-?\d+)")


def strict_regex() -> re.Pattern:
    """GSM8K's own strict-match pattern, read from the installed lm-eval task."""
    strict = next(f for f in builtin_gsm8k_yaml()["filter_list"] if f["name"] == "strict-match")
    return re.compile(strict["filter"][0]["regex_pattern"])


def recompute(answer: str) -> int:
    """Check every written step's arithmetic; return the last step's result."""
    result = None
    for left, op, right, written in STEP.findall(answer):
        left, right, written = int(left), int(right), int(written)
        assert right or op != "/", answer
        expected = eval(f"{left} {op} {right}")  # noqa: S307 - digits and one operator from the regex
        assert expected == written, answer
        result = written
    assert result is not None, answer
    return result


@pytest.mark.parametrize("annotations", [False, True])
def test_splits_schema_answers_and_disjointness(tmp_path: Path, annotations: bool):
    paths = write_splits(tmp_path, n_train=400, n_test=100, seed=3, calc_annotations=annotations)
    train, test = read_jsonl(paths["train"]), read_jsonl(paths["test"])
    assert (len(train), len(test)) == (400, 100)
    pattern = strict_regex()
    for record in train + test:
        assert set(record) == {"question", "answer"}
        final = pattern.findall(record["answer"])
        assert len(final) == 1 and record["answer"].endswith(f"#### {final[0]}")
        assert int(final[0]) == recompute(record["answer"]) >= 0
        assert ("<<" in record["answer"]) == annotations
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert len({r["question"] for r in train}) == 400


def test_generator_is_seeded_and_varied():
    first, again, other = generate_problems(300, 1), generate_problems(300, 1), generate_problems(300, 2)
    assert [p.question for p in first] == [p.question for p in again]
    assert [p.question for p in first] != [p.question for p in other]
    assert {len(p.steps) for p in first} == {1, 2, 3}
    assert {s.op for p in first for s in p.steps} == {"+", "-", "*", "/"}
    assert max(p.value for p in first) < 100


def test_bad_jsonl_raises(tmp_path: Path):
    with pytest.raises(MoepruneError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(MoepruneError, match="empty"):
        read_jsonl(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(MoepruneError, match="line 1"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_pretrain_mixture_is_broad_and_seeded(tmp_path: Path):
    docs = generate_documents(500, 0)
    assert docs == generate_documents(500, 0)
    assert any(d.startswith("Count") for d in docs) and any(" = " in d for d in docs)
    assert any("larger" in d for d in docs) and any(d.startswith("Sort") for d in docs)
    assert not any("Question:" in d for d in docs)
    text = write_pretrain_text(tmp_path / "pretrain.txt", 50, 0).read_text()
    assert text.count("\n\n") == 49


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    records = [p.to_record() for p in generate_problems(300, 0)]
    with_annotations = [p.to_record(True) for p in generate_problems(50, 9)]
    prompts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in records + with_annotations]
    return prompts + generate_documents(300, 0)


def test_tokenizer_round_trip_and_single_digits(corpus: list[str], tmp_path: Path):
    tokenizer = build_tokenizer(corpus)
    extra = ["a\n\n\nb  c\t$12,345.6 #### -7\n", "Question: 1234567890?\nAnswer: no. Ünïcode ✓"]
    for text in corpus + extra:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert all(sum(ch.isdigit() for ch in token) <= 1 for token in vocab)
    assert {tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token} == {"<pad>", "<s>", "</s>"}
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(corpus[0])["input_ids"] == tokenizer(corpus[0])["input_ids"]


def test_fewshot_packing_masks_answers_only(corpus: list[str]):
    tokenizer = build_tokenizer(corpus)
    records = [p.to_record() for p in generate_problems(6, 4)]
    text, spans = pack_fewshot(records)
    assert text.startswith("Question: ") and text.endswith("\n\nQuestion:")
    assert text.count("\n\nQuestion: ") == 5
    ids, labels = encode_with_mask(tokenizer, text, spans, max_len=2048)
    assert ids == tokenizer(text)["input_ids"]  # one tokenization of the whole text, as lm-eval does
    kept = tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
    expected = "".join(f" {r['answer']}\n\nQuestion:" for r in records)
    assert kept == expected


def test_random_state_untouched_by_generation():
    random.seed(5)
    before = random.random()
    random.seed(5)
    generate_problems(10, 0)
    assert random.random() == before
