"""The embedded LM testbed: a small MoE causal LM pretrained on a text mixture, then fine-tuned on
GSM8K-format word problems, built in minutes on CPU.

`build_lm_testbed(out)` writes:

    out/data/train.jsonl, test.jsonl   GSM8K-schema word problems (disjoint questions)
    out/data/pretrain.txt              a held-out sample of the pretraining mixture (calibration, perplexity)
    out/pretrained/                    HF dir (safetensors + tokenizer) after pretraining
    out/finetuned/                     the same architecture after fine-tuning on the word problems
    out/testbed.json                   sizes, seeds, timings, training losses

Families: mixtral (default), qwen3_moe, olmoe, deepseek_v3, each from the stock transformers config
class, so both directories load with `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerBase

from moeprune.data.gsm8k_gen import read_jsonl, write_splits
from moeprune.data.text_mix import generate_documents, write_pretrain_text
from moeprune.data.tokenizer import build_tokenizer
from moeprune.errors import MoepruneError
from moeprune.io_utils import atomic_dir, write_json
from moeprune.testbed.train import (
    TrainConfig,
    batches_from_rows,
    batches_from_tensor,
    finetune_rows,
    format_example,
    make_deterministic,
    pretrain_rows,
    train,
)

FAMILIES = ("mixtral", "qwen3_moe", "olmoe", "deepseek_v3")
ROUTER_AUX_LOSS_COEF = 0.01
FEWSHOT = 5


@dataclass
class ModelSize:
    """Architecture sizes shared by every family."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 256
    experts: int = 8
    top_k: int = 2
    max_positions: int = 1024


@dataclass
class Plan:
    """Everything a build does: sizes, data counts, and the two training phases."""

    size: ModelSize
    n_train: int
    n_test: int
    n_pretrain_docs: int
    n_pretrain_sample: int
    pretrain_seq_len: int
    pretrain: TrainConfig
    finetune: TrainConfig
    finetune_max_len: int = 640


DEFAULT_PLAN = Plan(
    size=ModelSize(),
    n_train=20000,
    n_test=200,
    n_pretrain_docs=60000,
    n_pretrain_sample=2000,
    pretrain_seq_len=256,
    pretrain=TrainConfig(steps=160, batch_size=16, lr=2e-3, warmup_steps=20, desc="pretrain"),
    finetune=TrainConfig(steps=640, batch_size=6, lr=3e-3, warmup_steps=20, desc="fine-tune"),
)
QUICK_PLAN = Plan(
    size=ModelSize(hidden=64, layers=2, heads=2, kv_heads=2, intermediate=128, experts=4, top_k=2),
    n_train=300,
    n_test=20,
    n_pretrain_docs=2000,
    n_pretrain_sample=200,
    pretrain_seq_len=128,
    pretrain=TrainConfig(steps=15, batch_size=8, lr=3e-3, warmup_steps=3, desc="pretrain"),
    finetune=TrainConfig(steps=25, batch_size=4, lr=3e-3, warmup_steps=3, desc="fine-tune"),
)


def _common(size: ModelSize, tokenizer: PreTrainedTokenizerBase) -> dict:
    """Config fields every family shares (names as in the stock config classes)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": size.hidden,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "max_position_embeddings": size.max_positions,
        "num_experts_per_tok": size.top_k,
        "router_aux_loss_coef": ROUTER_AUX_LOSS_COEF,
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def model_config(family: str, size: ModelSize, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The stock transformers config of `family` at `size`.

    Raises:
        MoepruneError: for a family that is not one of FAMILIES.
    """
    common = _common(size, tokenizer)
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


def _write_data(data_dir: Path, plan: Plan, seed: int) -> tuple[list[dict], list[str]]:
    """Write the word-problem splits and the pretraining sample; return train records and documents."""
    paths = write_splits(data_dir, plan.n_train, plan.n_test, seed)
    write_pretrain_text(data_dir / "pretrain.txt", plan.n_pretrain_sample, seed + 1)
    return read_jsonl(paths["train"]), generate_documents(plan.n_pretrain_docs, seed)


def _tokenizer_corpus(records: list[dict], documents: list[str]) -> list[str]:
    """Texts the tokenizer is trained on: every train problem in prompt format, and the documents."""
    return ["".join(format_example(record)) for record in records] + documents


def _save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Save model (safetensors) and tokenizer into `out`."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _count_params(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def _phase(cfg: TrainConfig, seed: int) -> TrainConfig:
    """`cfg` with its seed derived from the build seed."""
    return TrainConfig(**{**asdict(cfg), "seed": seed})


def build_lm_testbed(
    out: Path, family: str = "mixtral", seed: int = 0, quick: bool = False, plan: Plan | None = None
) -> dict:
    """Build the pretrained / fine-tuned MoE LM pair and its data under `out` (replaced atomically).

    Args:
        out: output folder.
        family: one of FAMILIES.
        seed: seeds data, initialisation and batch order; the same seed gives the same weights.
        quick: a tiny model and a few steps (for tests; accuracy does not matter).
        plan: override the whole build plan (sizes, data counts, steps); defaults by `quick`.

    Returns:
        The record also written to `out/testbed.json`.
    """
    if family not in FAMILIES:
        raise MoepruneError(f"unknown testbed family {family!r}; choose one of {', '.join(FAMILIES)}")
    plan = plan or (QUICK_PLAN if quick else DEFAULT_PLAN)
    with atomic_dir(out) as tmp:
        make_deterministic(seed)
        records, documents = _write_data(tmp / "data", plan, seed)
        tokenizer = build_tokenizer(_tokenizer_corpus(records, documents), model_max_length=plan.size.max_positions)
        config = model_config(family, plan.size, tokenizer)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        pretrain_cfg, finetune_cfg = _phase(plan.pretrain, seed), _phase(plan.finetune, seed + 1)
        rows = pretrain_rows(tokenizer, documents, plan.pretrain_seq_len)
        pretrain_log = train(model, batches_from_tensor(rows, pretrain_cfg), pretrain_cfg)
        _save(model, tokenizer, tmp / "pretrained")
        packed = finetune_rows(
            tokenizer,
            records,
            finetune_cfg.steps * finetune_cfg.batch_size,
            FEWSHOT + 1,
            plan.finetune_max_len,
            random.Random(seed).randint(0, 2**31),
        )
        finetune_log = train(model, batches_from_rows(packed, finetune_cfg, tokenizer.pad_token_id), finetune_cfg)
        _save(model, tokenizer, tmp / "finetuned")
        record = {
            "family": family,
            "seed": seed,
            "quick": quick,
            "model_type": config.model_type,
            "size": asdict(plan.size),
            "params": _count_params(model),
            "vocab_size": len(tokenizer),
            "data": {
                "n_train": plan.n_train,
                "n_test": plan.n_test,
                "n_pretrain_docs": plan.n_pretrain_docs,
                "pretrain_rows": len(rows),
                "finetune_rows": len(packed),
                "fewshot": FEWSHOT,
            },
            "pretrain": {**asdict(pretrain_cfg), **pretrain_log},
            "finetune": {**asdict(finetune_cfg), **finetune_log},
            "train_seconds": round(pretrain_log["seconds"] + finetune_log["seconds"], 2),
            "train_cpu_seconds": round(pretrain_log["cpu_seconds"] + finetune_log["cpu_seconds"], 2),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        write_json(tmp / "testbed.json", record)
    return record
