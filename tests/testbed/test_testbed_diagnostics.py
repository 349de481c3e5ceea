"""Routing diagnostics of the LM testbed: NMI against scikit-learn, routing counts, unigram baseline."""

import math

import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from moeprune.testbed.diagnostics import (
    measure_by_kind,
    normalised_mutual_information,
    routing_record,
    unigram_perplexities,
)
from moeprune.testing import tiny_moe_model


def test_nmi_matches_scikit_learn_on_label_pairs():
    counts = torch.tensor([[5, 0, 1, 0], [0, 3, 0, 2], [1, 1, 1, 1]])
    kinds, experts = [], []
    for k in range(counts.shape[0]):
        for e in range(counts.shape[1]):
            kinds += [k] * int(counts[k, e])
            experts += [e] * int(counts[k, e])
    expected = normalized_mutual_info_score(kinds, experts, average_method="arithmetic")
    assert normalised_mutual_information(counts) == pytest.approx(expected, abs=1e-9)


def test_nmi_bounds():
    assert normalised_mutual_information(torch.tensor([[2, 0], [0, 2]])) == pytest.approx(1.0)
    assert normalised_mutual_information(torch.tensor([[3, 3], [3, 3]])) == pytest.approx(0.0)


def test_unigram_perplexity_of_a_uniform_kind():
    train = {"a": torch.tensor([[1, 2, 3, 2, 3, 2, 3]])}
    heldout = {"a": torch.tensor([[1, 2, 3]])}
    # counts over tokens after <s>: 2 -> 3+1, 3 -> 3+1, others 0+1; vocab 4
    probs = {2: 4 / 10, 3: 4 / 10}
    expected = math.exp(-(math.log(probs[2]) + math.log(probs[3])) / 2)
    assert unigram_perplexities(train, heldout, vocab_size=4)["a"] == pytest.approx(expected, rel=1e-3)


def test_one_pass_counts_every_token_top_k_times_and_gives_perplexity():
    model = tiny_moe_model("mixtral", num_experts=4, top_k=2).eval()
    rows = {"x": torch.randint(3, 50, (3, 7)), "y": torch.randint(3, 50, (2, 7))}
    perplexity, counts = measure_by_kind(model, rows)
    assert set(perplexity) == {"x", "y"} and all(value > 1 for value in perplexity.values())
    for matrix in counts.values():
        assert matrix.shape == (2, 4)
        assert matrix.sum(1).tolist() == [3 * 7 * 2, 2 * 7 * 2]
    record = routing_record(counts, ["x", "y"])
    assert set(record["layers"]) == {str(i) for i in counts}
