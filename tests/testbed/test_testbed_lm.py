"""The LM testbed build: files, stock reload, shared architecture, determinism, every family, the
mixture's kinds and the routing diagnostics."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from moeprune.data.gsm8k_gen import read_jsonl
from moeprune.errors import MoepruneError
from moeprune.testbed.corpus import KIND_NAMES
from moeprune.testbed.lm import FAMILIES, build_from_plan, build_lm_testbed
from moeprune.testbed.presets import PRESETS, ModelSize, Plan
from moeprune.testbed.train import TrainConfig

MICRO_PLAN = Plan(
    family="mixtral",
    size=ModelSize(hidden=32, layers=1, heads=2, kv_heads=2, intermediate=32, experts=4, top_k=2),
    n_train=30,
    n_test=5,
    docs_per_kind=40,
    n_pretrain_sample=20,
    pretrain_seq_len=64,
    rows_per_kind=1,
    pretrain=TrainConfig(steps=3, batch_size=2, lr=1e-3, warmup_steps=1, desc="pretrain"),
    adapt=TrainConfig(steps=3, batch_size=2, lr=1e-3, warmup_steps=1, desc="adapt"),
    heldout_rows=2,
)


@pytest.fixture(scope="module")
def quick_testbed(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lm") / "testbed"
    return out, build_lm_testbed(out, quick=True, seed=0)


def test_quick_build_writes_everything(quick_testbed):
    out, record = quick_testbed
    for name in ("data/train.jsonl", "data/test.jsonl", "data/pretrain.txt", "testbed.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "testbed.json").read_text()) == record
    assert len(read_jsonl(out / "data/train.jsonl")) == record["data"]["n_train"]
    assert (out / "data/pretrain.txt").read_text().strip()
    assert record["train_seconds"] < 120 and record["adapt"]["steps"] > 0
    machine = record["machine"]
    assert machine["cpu"] and machine["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["mkl_cbwr"] == os.environ.get("MKL_CBWR")
    first, last = record["adapt"]["losses"][0][1], record["adapt"]["losses"][-1][1]
    assert last < first
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_both_models_reload_with_stock_classes_and_share_architecture(quick_testbed):
    out, _ = quick_testbed
    models = {name: AutoModelForCausalLM.from_pretrained(out / name) for name in ("pretrained", "finetuned")}
    assert all((out / name / "model.safetensors").is_file() for name in models)
    pre, fine = (m.state_dict() for m in models.values())
    assert {k: v.shape for k, v in pre.items()} == {k: v.shape for k, v in fine.items()}
    router = "model.layers.0.mlp.gate.weight"
    assert router in pre and not torch.equal(pre[router], fine[router])
    tokenizer = AutoTokenizer.from_pretrained(out / "finetuned")
    text = read_jsonl(out / "data/test.jsonl")[0]["answer"]
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    ids = tokenizer("Question: 2 + 3\nAnswer:", return_tensors="pt")["input_ids"]
    assert models["finetuned"](ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_trained_with_the_recorded_experts_kernel_and_saved_without_it(quick_testbed):
    out, record = quick_testbed
    assert record["experts_implementation"] == PRESETS["quick"].experts_implementation == "grouped_mm"
    assert "experts_implementation" not in (out / "finetuned" / "config.json").read_text()
    model = AutoModelForCausalLM.from_pretrained(out / "finetuned")
    ids = AutoTokenizer.from_pretrained(out / "finetuned")("Question: 2 + 3\nAnswer:", return_tensors="pt")["input_ids"]
    model.set_experts_implementation("grouped_mm")
    grouped = model(ids).logits
    model.set_experts_implementation("eager")
    assert torch.allclose(model(ids).logits, grouped, atol=1e-4)  # other rounding, the same function


def test_lm_eval_adds_bos_like_training(quick_testbed):
    from lm_eval.models.huggingface import HFLM

    out, _ = quick_testbed
    lm = HFLM(pretrained=str(out / "finetuned"), device="cpu", batch_size=1)
    ids, _ = lm.tok_batch_encode(["Question: 1 + 1\nAnswer:"])
    assert int(ids[0, 0]) == lm.tokenizer.bos_token_id  # training rows start with <s> too


def test_same_seed_same_weights(quick_testbed, tmp_path: Path):
    out, record = quick_testbed
    again = build_lm_testbed(tmp_path / "again", quick=True, seed=0)
    seeded = [build_from_plan(tmp_path / f"micro{seed}", MICRO_PLAN, seed=seed) for seed in (1, 2)]
    assert again["adapt"]["losses"] == record["adapt"]["losses"]
    for name in ("pretrained", "finetuned"):
        a, b = (load_file(root / name / "model.safetensors") for root in (out, tmp_path / "again"))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    for name in ("train.jsonl", "test.jsonl", "pretrain.txt"):
        assert (out / "data" / name).read_bytes() == (tmp_path / "again/data" / name).read_bytes()
    assert seeded[0]["pretrain"]["losses"] != seeded[1]["pretrain"]["losses"]


PINNED_BUILD = """
import json, sys
from pathlib import Path
from moeprune.testbed.lm import build_lm_testbed
print(json.dumps(build_lm_testbed(Path(sys.argv[1]), quick=True)["machine"]))
"""


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="pins x86 kernels")
def test_pinned_kernels_are_recorded(tmp_path: Path):
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
    done = subprocess.run(
        [sys.executable, "-c", PINNED_BUILD, str(tmp_path / "pinned")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    machine = json.loads(done.stdout.strip().splitlines()[-1])
    assert (machine["torch_cpu_capability"], machine["mkl_cbwr"]) == ("AVX2", "AVX2")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "qwen3_moe"])
def test_other_families_build_and_reload(tmp_path: Path, family: str):
    record = build_from_plan(tmp_path / family, replace(MICRO_PLAN, family=family))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / family / "finetuned")
    assert model.config.model_type == record["model_type"] == family
    gate = model.model.layers[0].mlp.gate
    assert gate.weight.shape == (MICRO_PLAN.size.experts, MICRO_PLAN.size.hidden)


def test_unknown_family_raises(tmp_path: Path):
    with pytest.raises(MoepruneError, match="mixtral"):
        build_lm_testbed(tmp_path / "x", family="gpt2", quick=True)
    assert not (tmp_path / "x").exists()


def test_unknown_preset_raises(tmp_path: Path):
    with pytest.raises(MoepruneError, match="mixtral-8x"):
        build_lm_testbed(tmp_path / "x", preset="huge")
    assert not (tmp_path / "x").exists()


def test_presets_fine_grained_default_and_coarse_mixtral():
    default, coarse = PRESETS["default"], PRESETS["mixtral-8x"]
    assert default.family == "qwen3_moe" and default.size.experts >= 32 and default.size.top_k >= 4
    assert coarse.family == "mixtral" and (coarse.size.experts, coarse.size.top_k) == (8, 2)
    active = [p.size.top_k * p.size.intermediate for p in (default, coarse)]
    assert active[0] == active[1]  # the same active expert width per token


def test_e64_presets_are_the_default_with_half_the_experts_at_the_same_active_width():
    default, top4, top8 = PRESETS["default"], PRESETS["e64-top4"], PRESETS["e64-top8"]
    assert (default.size.experts, default.size.top_k) == (128, 4)
    assert (top4.size.experts, top4.size.top_k, top8.size.experts, top8.size.top_k) == (64, 4, 64, 8)
    widths = {p.size.top_k * p.size.intermediate for p in (default, top4, top8)}
    assert widths == {default.size.top_k * default.size.intermediate}
    assert replace(top4, size=default.size) == default and replace(top8, size=default.size) == default


def test_long_preset_is_e64_top8_with_the_earlier_1000_pretraining_steps():
    top8, long = PRESETS["e64-top8"], PRESETS["long"]
    assert (top8.pretrain.steps, long.pretrain.steps) == (600, 1000)
    assert replace(long, pretrain=top8.pretrain) == top8


def test_mixture_has_every_kind_in_every_batch_and_heldout_files(quick_testbed):
    out, record = quick_testbed
    kinds = record["data"]["kinds"]
    assert kinds == list(KIND_NAMES) and len(kinds) >= 6 and "word_problems" in kinds
    assert all(record["data"]["pretrain_rows"][kind] > 0 for kind in kinds)
    assert record["pretrain"]["batch_size"] == record["data"]["rows_per_kind_per_batch"] * len(kinds)
    texts = {kind: (out / "data/kinds" / f"{kind}.txt").read_text() for kind in kinds}
    assert texts["word_problems"].startswith("Question: ") and "def " in texts["code"]
    assert "Vellish:" in texts["translation"] and "days" in texts["calendar"]
    train_questions = {r["question"] for r in read_jsonl(out / "data/train.jsonl")}
    assert not any(q in texts["word_problems"] for q in train_questions)  # held out


def test_diagnostics_recorded_and_drawn(quick_testbed):
    out, record = quick_testbed
    kinds = record["data"]["kinds"]
    assert set(record["unigram_perplexity"]) == set(kinds)
    for name in ("pretrained", "finetuned"):
        diag = record["diagnostics"][name]
        assert set(diag["perplexity"]) == set(kinds) and all(v > 1 for v in diag["perplexity"].values())
        routing = diag["routing"]
        assert routing["kinds"] == kinds and len(routing["layers"]) == record["size"]["layers"]
        for layer in routing["layers"].values():
            assert 0.0 <= layer["nmi"] <= 1.0
            assert all(abs(sum(share) - 1) < 1e-3 for share in layer["load"].values())
        assert (out / f"routing_{name}.png").stat().st_size > 1000
