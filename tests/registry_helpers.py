"""Tiny Mixtral model directories with moeprune lineage records, for the registry and promotion tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from moeprune.outputs import sha256_files, write_json
from moeprune.testing import tiny_moe_model


def tiny_mixtral(out: Path, num_experts: int = 4, seed: int = 0) -> Path:
    """Save a tiny random MixtralForCausalLM (2 layers, hidden 16) to `out`."""
    shape = dict(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    tiny_moe_model("mixtral", num_experts=num_experts, seed=seed, **shape).save_pretrained(out)
    return out


def model_sha(model_dir: Path) -> str:
    """The weights sha256 the registry uses."""
    return sha256_files(sorted(Path(model_dir).glob("*.safetensors")))


def pruned_child(base: Path, out: Path, seed: int, stage: str = "prune-experts", **params) -> Path:
    """A 2-expert model whose lineage names `base` as base and parent."""
    tiny_mixtral(out, num_experts=2, seed=seed)
    lineage = {
        "base": {"path": str(base), "sha256": model_sha(base)},
        "parent": {"path": str(base)},
        "stage": stage,
        "params": params or {"method": "stun", "expert_sparsity": 0.5},
        "calibration_sha256": "c" * 64,
        "profile_sha256": "",
        "scores_sha256": "s" * 64,
        "git_commit": "0" * 40,
        "packages": {"torch": torch.__version__},
        "time": "2026-11-22T00:00:00",
        "base_stats": {"num_experts": 4},
    }
    (out / "moeprune.json").write_text(json.dumps(lineage))
    return out


def metrics_file(path: Path, metric: float, total: float, expert: float = 0.5) -> Path:
    """A flat metrics JSON as `moeprune evaluate` writes it."""
    write_json(
        path,
        {
            "expert_sparsity": expert,
            "weight_sparsity": max(0.0, total - expert),
            "total_sparsity": total,
            "params": 1000,
            "nonzero_params": int(1000 * (1 - total)),
            "gsm8k.exact_match_strict": metric,
            "seconds": 1.0,
        },
    )
    return path
