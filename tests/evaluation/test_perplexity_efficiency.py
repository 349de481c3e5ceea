"""Perplexity against a direct computation; sparsity figures on a model with known removals and zeros."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from builders import save_tiny_lm

from moeprune.arch import get_adapter, load_model, remove_experts
from moeprune.arch.linears import count_weights
from moeprune.errors import MoepruneError
from moeprune.evaluation.efficiency import sparsity_figures, sparsity_from_counts
from moeprune.evaluation.perplexity import evaluate_perplexity, split_windows
from moeprune.registry.lineage import build_lineage, write_lineage

TEXT = "Tom has 3 red apples. Anna has 4 blue books. Sam eats 7 coins. " * 3  # 3 x 17 = 51 tokens


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("ppl") / "model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(TEXT)
    return path


def direct_perplexity(model_dir: Path, text: str, seq_len: int) -> tuple[float, int]:
    """exp of the token-weighted mean of `model(window, labels=window).loss` over the windows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), seq_len):
            window = torch.tensor([ids[start : start + seq_len]])
            loss = model(input_ids=window, labels=window).loss.item()
            nll, count = nll + loss * (window.shape[1] - 1), count + window.shape[1] - 1
    return math.exp(nll / count), count


def test_one_window_equals_the_models_own_loss(lm, corpus):
    expected, count = direct_perplexity(lm, TEXT, 128)
    result = evaluate_perplexity(lm, corpus, limit=None, batch_size=4)
    assert result["perplexity.tokens"] == count == 51  # 52 tokens with EOS, first one not predicted
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)


def test_windows_and_batches(lm, corpus):
    expected, count = direct_perplexity(lm, TEXT, 10)  # windows of 10 x 5 and a tail of 2
    result = evaluate_perplexity(lm, corpus, limit=None, batch_size=3, seq_len=10)  # batches of 3, 2, tail
    assert result["perplexity.tokens"] == count == 5 * 9 + 1
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert evaluate_perplexity(lm, corpus, limit=2, batch_size=8, seq_len=10)["perplexity.tokens"] == 18


def test_split_windows_drops_a_one_token_tail():
    assert [len(w) for w in split_windows(list(range(21)), 10)] == [10, 10]
    assert [len(w) for w in split_windows(list(range(22)), 10)] == [10, 10, 2]


def test_perplexity_bad_inputs(lm, corpus, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(MoepruneError, match="does not exist"):
        evaluate_perplexity(lm, tmp_path / "missing.txt", None, 8)
    with pytest.raises(MoepruneError, match="is empty"):
        evaluate_perplexity(lm, empty, None, 8)
    with pytest.raises(MoepruneError, match="context of 128 tokens"):
        evaluate_perplexity(lm, corpus, None, 8, seq_len=256)


def test_sparsity_figures_of_an_unpruned_model_are_relative_to_itself(lm):
    figures = sparsity_figures(lm)
    model = load_model(lm)
    targeted, nonzero = count_weights(get_adapter(model))
    assert figures["expert_sparsity"] == 0.0
    assert figures["weight_sparsity"] == figures["total_sparsity"] == pytest.approx(1 - nonzero / targeted)
    assert figures["experts_per_layer"] == [8, 8]
    assert figures["params"] == sum(p.numel() for p in model.parameters())
    assert figures["size_bytes"] == (lm / "model.safetensors").stat().st_size


def _zero_known_weights(model) -> int:
    """Zero 10 rows of layer 0's q_proj and 3 columns of one expert's down_proj; return how many."""
    adapter = get_adapter(model)
    with torch.no_grad():
        q_proj = model.model.layers[0].self_attn.q_proj.weight  # [32, 32]
        q_proj[:10] = 0.0
        adapter.layers[1].expert_weights(2)["down_proj"][:, :3] = 0.0  # [32, 48] view
    return 10 * 32 + 32 * 3


def test_sparsity_figures_count_removed_experts_and_zeros(tmp_path):
    from moeprune.testing import tiny_moe_model

    base_dir = save_tiny_lm(tmp_path / "base")
    base = load_model(base_dir)
    base_targeted, base_nonzero = count_weights(get_adapter(base))
    assert base_targeted == base_nonzero  # random weights: no exact zeros to begin with
    model = tiny_moe_model("mixtral")
    remove_experts(model, {0: [0, 1, 2, 3, 4, 5], 1: [1, 2, 3, 4, 6, 7]})  # 2 of 8 removed per layer
    zeros = _zero_known_weights(model)
    pruned_dir = save_tiny_lm(tmp_path / "pruned")  # tokenizer + files, weights replaced below
    model.save_pretrained(pruned_dir)
    write_lineage(pruned_dir, build_lineage(stage="test", params={}, parent=base_dir, parent_model=base))

    per_expert = 3 * 48 * 32
    targeted = base_targeted - 2 * 2 * per_expert
    figures = sparsity_figures(pruned_dir)
    assert figures["experts_per_layer"] == [6, 6]
    assert figures["expert_sparsity"] == pytest.approx(4 / 16)
    assert figures["weight_sparsity"] == pytest.approx(zeros / targeted)
    assert figures["total_sparsity"] == pytest.approx(1 - (targeted - zeros) / base_targeted)
    assert figures["targeted_params"] == targeted and figures["nonzero_targeted_params"] == targeted - zeros
    base_params = sum(p.numel() for p in base.parameters())
    assert figures["params"] == base_params - 2 * 2 * (per_expert + 32)  # expert matrices + router rows
    assert figures["params"] - figures["nonzero_params"] == zeros + 32  # + the zero padding-token embedding
    blocks = sum(p.numel() for p in model.model.layers.parameters())
    assert figures["active_params_per_token"] == blocks - 2 * (6 - 2) * per_expert
    assert figures["size_bytes"] == (pruned_dir / "model.safetensors").stat().st_size
    assert sparsity_figures(pruned_dir, streaming=True) == figures  # one layer at a time, the same counts
    stats = json.loads((pruned_dir / "moeprune.json").read_text())["base_stats"]
    assert stats["prunable_params"] == base_targeted and stats["routed_experts"] == 16


def test_sparsity_from_counts():
    figures = sparsity_from_counts(6, 600, 300, {"routed_experts": 8, "prunable_params": 800})
    assert figures == {"expert_sparsity": 0.25, "weight_sparsity": 0.5, "total_sparsity": 1 - 300 / 800}
