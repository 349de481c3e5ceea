"""What the LM testbed build measures on held-out text of every kind.

- perplexity per kind, beside the perplexity of a unigram model fitted on that kind's training rows
  (add-one smoothing): a model that learned a kind is far below its unigram baseline;
- routing per kind and MoE layer: the share of each kind's (token, chosen expert) pairs that go to each
  expert (a kind x expert load matrix), and the normalised mutual information between kind and chosen
  expert, NMI = 2 I(kind; expert) / (H(kind) + H(expert)) (the arithmetic normalisation), from 0 (every
  kind routed alike) to 1 (expert sets disjoint and as informative as the kind).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from moeprune.arch.adapter import get_adapter

EVAL_BATCH = 8


def _batches(rows: Tensor, limit: int) -> list[Tensor]:
    return list(rows[:limit].split(EVAL_BATCH))


def unigram_perplexities(
    train_rows: dict[str, Tensor], heldout_rows: dict[str, Tensor], vocab_size: int, limit: int = 32
) -> dict[str, float]:
    """Perplexity of each kind's add-one-smoothed unigram model on the same held-out tokens."""
    result = {}
    for kind, rows in heldout_rows.items():
        counts = torch.bincount(train_rows[kind][:, 1:].flatten(), minlength=vocab_size).double() + 1
        log_probs = (counts / counts.sum()).log()
        tokens = rows[:limit, 1:].flatten()
        result[kind] = round(math.exp(-float(log_probs[tokens].mean())), 3)
    return result


@torch.no_grad()
def measure_by_kind(
    model: nn.Module, rows: dict[str, Tensor], limit: int = 32
) -> tuple[dict[str, float], dict[int, Tensor]]:
    """One pass over the first `limit` held-out rows of every kind.

    Returns:
        The perplexity per kind (every token but `<s>`), and per MoE layer a `[kinds, experts]` count
        of (token, chosen expert) pairs, kinds in `rows` order.
    """
    model.eval()
    adapter = get_adapter(model)
    layers = adapter.moe_indices
    top_k = adapter.layer(layers[0]).top_k
    perplexity, counts = {}, {}
    for row, (kind, kind_rows) in enumerate(rows.items()):
        total, count = 0.0, 0
        for batch in _batches(kind_rows, limit):
            out = model(input_ids=batch, output_router_logits=True)
            logits = out.logits[:, :-1].float()
            nll = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
            total, count = total + float(nll), count + batch[:, 1:].numel()
            for index, layer_logits in zip(layers, out.router_logits, strict=True):
                chosen = layer_logits.float().topk(top_k, dim=-1).indices.flatten()
                experts = layer_logits.shape[-1]
                matrix = counts.setdefault(index, torch.zeros(len(rows), experts, dtype=torch.long))
                matrix[row] += torch.bincount(chosen, minlength=experts)
        perplexity[kind] = round(math.exp(total / max(count, 1)), 3)
    return perplexity, counts


def normalised_mutual_information(counts: Tensor) -> float:
    """NMI (arithmetic normalisation) of the joint distribution given by a `[kinds, experts]` count matrix."""
    joint = counts.double() / counts.sum()
    p_kind, p_expert = joint.sum(1), joint.sum(0)
    nonzero = joint > 0
    outer = p_kind[:, None] * p_expert[None, :]
    mutual = float((joint[nonzero] * (joint[nonzero] / outer[nonzero]).log()).sum())
    entropy = sum(float(-(p[p > 0] * p[p > 0].log()).sum()) for p in (p_kind, p_expert))
    return 0.0 if entropy == 0 else 2 * mutual / entropy


def routing_record(counts: dict[int, Tensor], kinds: list[str]) -> dict:
    """testbed.json's routing entry: per layer the NMI and each kind's load share over the experts."""
    layers = {}
    for index, matrix in counts.items():
        share = matrix.double() / matrix.sum(1, keepdim=True).clamp_min(1)
        layers[str(index)] = {
            "nmi": round(normalised_mutual_information(matrix), 4),
            "load": {kind: [round(float(v), 4) for v in share[row]] for row, kind in enumerate(kinds)},
        }
    return {"kinds": kinds, "layers": layers}
