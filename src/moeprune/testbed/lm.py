"""The embedded LM testbed: a small MoE causal LM pretrained on a mixture of kinds of text, then
adapted to GSM8K-format word problems, built in minutes on CPU.

`build_lm_testbed(out)` writes:

    out/data/train.jsonl, test.jsonl   GSM8K-schema word problems (disjoint questions)
    out/data/pretrain.txt              a held-out sample of the text kinds (calibration, perplexity)
    out/data/kinds/<kind>.txt          held-out documents of each kind of the pretraining mixture
    out/pretrained/                    HF dir (safetensors + tokenizer) after pretraining
    out/finetuned/                     the same architecture after the task adaptation
    out/routing_<model>.png            kind x expert load per layer (routing diagnostics)
    out/testbed.json                   plan, sizes, seeds, timings, losses, per-kind perplexity, routing, CPU

Families: qwen3_moe (default preset), mixtral, olmoe, deepseek_v3, each from the stock transformers
config class, so both directories load with `AutoModelForCausalLM.from_pretrained`. Presets
(`testbed.presets`) fix sizes and steps; `family` overrides the preset's family at the same sizes.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerBase

from moeprune.data.gsm8k_gen import read_jsonl, write_splits
from moeprune.data.text_mix import write_pretrain_text
from moeprune.data.tokenizer import build_tokenizer
from moeprune.errors import MoepruneError
from moeprune.outputs import atomic_dir, write_json
from moeprune.profiling.plots import plot_kind_load
from moeprune.testbed import diagnostics
from moeprune.testbed.corpus import Corpus, build_corpus, heldout_text, mixed_batches, rows_by_kind
from moeprune.testbed.machine import machine_record
from moeprune.testbed.presets import FAMILIES, ROUTER_AUX_LOSS_COEF, ModelSize, Plan, get_plan
from moeprune.testbed.train import (
    TrainConfig,
    batches_from_rows,
    finetune_rows,
    make_deterministic,
    train,
)

FEWSHOT = 5


def _common(size: ModelSize, tokenizer: PreTrainedTokenizerBase, aux_loss_coef: float) -> dict:
    """Config fields every family shares (names as in the stock config classes)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": size.hidden,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "max_position_embeddings": size.max_positions,
        "num_experts_per_tok": size.top_k,
        "router_aux_loss_coef": aux_loss_coef,
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def model_config(
    family: str, size: ModelSize, tokenizer: PreTrainedTokenizerBase, aux_loss_coef: float = ROUTER_AUX_LOSS_COEF
) -> PretrainedConfig:
    """The stock transformers config of `family` at `size`.

    Raises:
        MoepruneError: for a family that is not one of FAMILIES.
    """
    common = _common(size, tokenizer, aux_loss_coef)
    head_dim = size.hidden // size.heads
    if family == "mixtral":
        return transformers.MixtralConfig(
            **common, intermediate_size=size.intermediate, num_local_experts=size.experts, head_dim=head_dim
        )
    if family == "qwen3_moe":
        return transformers.Qwen3MoeConfig(
            **common,
            moe_intermediate_size=size.intermediate,
            intermediate_size=size.intermediate,
            num_experts=size.experts,
            num_local_experts=size.experts,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            head_dim=head_dim,
        )
    if family == "olmoe":
        return transformers.OlmoeConfig(
            **common, intermediate_size=size.intermediate, num_experts=size.experts, norm_topk_prob=True
        )
    if family == "deepseek_v3":
        return transformers.DeepseekV3Config(
            **common,
            intermediate_size=2 * size.intermediate,
            moe_intermediate_size=size.intermediate,
            n_routed_experts=size.experts,
            n_shared_experts=1,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=0,
            norm_topk_prob=True,
            routed_scaling_factor=1.0,
            q_lora_rank=None,
            kv_lora_rank=head_dim,
            qk_rope_head_dim=head_dim // 2,
            qk_nope_head_dim=head_dim // 2,
            v_head_dim=head_dim,
            head_dim=head_dim // 2,
        )
    raise MoepruneError(f"unknown testbed family {family!r}; choose one of {', '.join(FAMILIES)}")


def _write_data(data_dir: Path, plan: Plan, seed: int) -> Corpus:
    """Write the word-problem splits, the mixture sample and each kind's held-out text; return the corpus."""
    paths = write_splits(data_dir, plan.n_train, plan.n_test, seed)
    write_pretrain_text(data_dir / "pretrain.txt", plan.n_pretrain_sample, seed + 1)
    corpus = build_corpus(read_jsonl(paths["train"]), read_jsonl(paths["test"]), plan.docs_per_kind, seed)
    (data_dir / "kinds").mkdir()
    for kind, text in heldout_text(corpus).items():
        (data_dir / "kinds" / f"{kind}.txt").write_text(text)
    return corpus


def _save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Save model (safetensors) and tokenizer into `out`."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _count_params(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def _phase(cfg: TrainConfig, seed: int, batch_size: int | None = None) -> TrainConfig:
    """`cfg` with its seed derived from the build seed (and its batch size, when given)."""
    return replace(cfg, seed=seed, batch_size=batch_size or cfg.batch_size)


def _diagnose(model, name: str, heldout: dict, plan: Plan, out: Path) -> dict:
    """Per-kind perplexity and routing of one saved model; draws its kind x expert heat map."""
    perplexity, counts = diagnostics.measure_by_kind(model, heldout, plan.heldout_rows)
    routing = diagnostics.routing_record(counts, list(heldout))
    plot_kind_load(routing, out / f"routing_{name}.png", title=f"{name}: kind x expert load")
    return {"perplexity": perplexity, "routing": routing}


def build_lm_testbed(
    out: Path, family: str | None = None, seed: int = 0, quick: bool = False, preset: str | None = None
) -> dict:
    """Build the pretrained / adapted MoE LM pair and its data under `out` (replaced atomically).

    Args:
        out: output folder.
        family: one of FAMILIES; None keeps the preset's family.
        seed: seeds data, initialisation and batch order; the same seed gives the same weights.
        quick: shorthand for `preset="quick"`.
        preset: a name of `testbed.presets.PRESETS` (default: "default", or "quick" when `quick`).

    Returns:
        The record also written to `out/testbed.json`.
    """
    if quick and preset not in (None, "quick"):
        raise MoepruneError(f"--quick and --preset {preset} contradict each other; give one of them")
    name = preset or ("quick" if quick else "default")
    plan = get_plan(name)
    return build_from_plan(out, replace(plan, family=family or plan.family), seed, name)


def build_from_plan(out: Path, plan: Plan, seed: int = 0, preset: str = "custom") -> dict:
    """Build the testbed that `plan` describes (see `build_lm_testbed`)."""
    if plan.family not in FAMILIES:
        raise MoepruneError(f"unknown testbed family {plan.family!r}; choose one of {', '.join(FAMILIES)}")
    start, cpu_start = time.perf_counter(), time.process_time()
    with atomic_dir(out) as tmp:
        make_deterministic(seed, plan.threads)
        corpus = _write_data(tmp / "data", plan, seed)
        tokenizer = build_tokenizer(corpus.all_documents(), model_max_length=plan.size.max_positions)
        config = model_config(plan.family, plan.size, tokenizer, plan.router_aux_loss_coef)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.set_experts_implementation(plan.experts_implementation)
        train_rows = rows_by_kind(tokenizer, corpus.train, plan.pretrain_seq_len)
        heldout = rows_by_kind(tokenizer, corpus.heldout, plan.pretrain_seq_len)
        pretrain_cfg = _phase(plan.pretrain, seed, plan.rows_per_kind * len(train_rows))
        adapt_cfg = _phase(plan.adapt, seed + 1)
        pretrain_log = train(model, mixed_batches(train_rows, plan.rows_per_kind, pretrain_cfg), pretrain_cfg)
        _save(model, tokenizer, tmp / "pretrained")
        pretrained = _diagnose(model, "pretrained", heldout, plan, tmp)
        packed = finetune_rows(
            tokenizer,
            read_jsonl(tmp / "data" / "train.jsonl"),
            adapt_cfg.steps * adapt_cfg.batch_size,
            FEWSHOT + 1,
            plan.adapt_max_len,
            random.Random(seed).randint(0, 2**31),
        )
        adapt_log = train(model, batches_from_rows(packed, adapt_cfg, tokenizer.pad_token_id), adapt_cfg)
        _save(model, tokenizer, tmp / "finetuned")
        record = {
            "preset": preset,
            "family": plan.family,
            "seed": seed,
            "quick": preset == "quick",
            "model_type": config.model_type,
            "size": asdict(plan.size),
            "router_aux_loss_coef": plan.router_aux_loss_coef,
            "threads": plan.threads,
            "experts_implementation": plan.experts_implementation,
            "params": _count_params(model),
            "vocab_size": len(tokenizer),
            "data": {
                "n_train": plan.n_train,
                "n_test": plan.n_test,
                "kinds": list(train_rows),
                "docs_per_kind": plan.docs_per_kind,
                "pretrain_rows": {kind: len(rows) for kind, rows in train_rows.items()},
                "rows_per_kind_per_batch": plan.rows_per_kind,
                "adapt_rows": len(packed),
                "fewshot": FEWSHOT,
            },
            "pretrain": {**asdict(pretrain_cfg), **pretrain_log},
            "adapt": {**asdict(adapt_cfg), **adapt_log},
            "train_seconds": round(pretrain_log["seconds"] + adapt_log["seconds"], 2),
            "train_cpu_seconds": round(pretrain_log["cpu_seconds"] + adapt_log["cpu_seconds"], 2),
            "unigram_perplexity": diagnostics.unigram_perplexities(
                train_rows, heldout, len(tokenizer), plan.heldout_rows
            ),
            "diagnostics": {
                "pretrained": pretrained,
                "finetuned": _diagnose(model, "finetuned", heldout, plan, tmp),
            },
            "build_seconds": round(time.perf_counter() - start, 2),
            "build_cpu_seconds": round(time.process_time() - cpu_start, 2),
            "machine": machine_record(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        write_json(tmp / "testbed.json", record)
    return record
