"""Router-change scores (Chowdhury et al., 2024, https://arxiv.org/abs/2405.16646).

"A Provably Effective Method for Pruning Experts in Fine-tuned Sparse Mixture-of-Experts": experts that
matter for the fine-tuning task see their router row grow by Omega(1), irrelevant ones by O(1/sqrt(d)).
Needs the pretrained checkpoint the fine-tuned model came from (same architecture); no forward pass.

    router-change:      score_e = ||w_e^finetuned||_2 - ||w_e^pretrained||_2   (what the authors' code computes)
    router-change-diff: score_e = ||w_e^finetuned - w_e^pretrained||_2

Prune the smallest scores in every layer.

    score: {method: router-change, expert_sparsity: 0.5}     # with model.reference set
"""

from __future__ import annotations

import torch
from torch import Tensor

from moeprune.arch import MoEAdapter
from moeprune.errors import MoepruneError
from moeprune.scoring import implements
from moeprune.scoring.base import LayerScores, ScoringContext, ranked_layer_scores, router_modules


def check_same_architecture(model: MoEAdapter, reference: MoEAdapter) -> None:
    """MoepruneError unless both models have the same family, MoE layers and router shapes."""
    if model.family.name != reference.family.name:
        raise MoepruneError(
            f"the reference is a {reference.family.name} model but the model is {model.family.name}; "
            "pass the pretrained checkpoint this model was fine-tuned from"
        )
    if model.moe_indices != reference.moe_indices:
        raise MoepruneError(
            f"the reference has MoE layers {reference.moe_indices} but the model has {model.moe_indices}; "
            "pass the pretrained checkpoint this model was fine-tuned from"
        )
    for layer in model.layers:
        ours, theirs = layer.router_weight.shape, reference.layer(layer.index).router_weight.shape
        if ours != theirs:
            raise MoepruneError(
                f"layer {layer.index}: the reference router is {tuple(theirs)} but the model's is {tuple(ours)} "
                "(different expert count or router width); pass the pretrained checkpoint this model was "
                "fine-tuned from"
            )


def router_norm_change(finetuned: Tensor, pretrained: Tensor) -> Tensor:
    """`[E]`: ||w_e^ft||_2 - ||w_e^pt||_2 for router rows `[E, R]`."""
    return finetuned.double().norm(dim=1) - pretrained.double().norm(dim=1)


def router_row_distance(finetuned: Tensor, pretrained: Tensor) -> Tensor:
    """`[E]`: ||w_e^ft - w_e^pt||_2 for router rows `[E, R]`."""
    return (finetuned.double() - pretrained.double()).norm(dim=1)


def _router_scores(ctx: ScoringContext, method: str, formula) -> dict[int, LayerScores]:
    """Router rows only, of both models: nothing else is read (streamed sources hold the rest on meta)."""
    reference = ctx.require_reference(method)
    reference_adapter = reference.adapter
    check_same_architecture(ctx.adapter, reference_adapter)
    with (
        ctx.source.materialized(router_modules(ctx.adapter)),
        reference.materialized(router_modules(reference_adapter)),
        torch.no_grad(),
    ):
        scores = {
            layer.index: formula(
                layer.router_weight.detach().cpu(), reference_adapter.layer(layer.index).router_weight.detach().cpu()
            )
            for layer in ctx.adapter.layers
        }
    return ranked_layer_scores(ctx, scores)


@implements("router-change")
def score_router_change(ctx: ScoringContext) -> dict[int, LayerScores]:
    """Keep the experts whose router row norm grew most during fine-tuning."""
    return _router_scores(ctx, "router-change", router_norm_change)


@implements("router-change-diff")
def score_router_change_diff(ctx: ScoringContext) -> dict[int, LayerScores]:
    """Keep the experts whose router row moved furthest during fine-tuning."""
    return _router_scores(ctx, "router-change-diff", router_row_distance)
