"""What a family entry can say: the `Family` dataclass and the predicates and defaults entries share.

The entries themselves are in `arch.families` (one per covered family).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import PretrainedConfig


def always(_: PretrainedConfig) -> bool:
    return True


def never(_: PretrainedConfig) -> bool:
    return False


def norm_topk_prob(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "norm_topk_prob", False))


@dataclass(frozen=True)
class Family:
    """What differs between MoE families.

    Attributes:
        name: the config `model_type`.
        count_fields: config fields that hold the routed expert count (all are updated on removal).
        top_k_fields: config fields that hold top_k (clamped when fewer experts remain).
        router_attr: name of the router module inside the MoE block.
        router_weight: dotted path, inside the router, of its rows `[E, R]` (`weight`, or e.g. `wg.weight`
            where the router wraps a Linear; an MLP router's output projection, Zaya's
            `router_mlp.out_proj.weight`, whose R is the router's width, not the hidden size).
        router_inputs: tensors of the MoE block (not the router) that the block passes to the router after
            the hidden states, one entry per expert (a block-level score-correction bias); sliced on removal.
        router_takes_batch: the router reads hidden states `[B, T, H]` (AFMoE), not `[T, H]`.
        naee_refusal: why naee's restricted router cannot reproduce the pruned block (naee refuses the family).
        router_extra_rows: how many router rows follow the routed experts' (Inkling's shared-expert gates);
            removal and naee keep them, after the kept experts' rows.
        experts_read_projection: the block projects the hidden states down before the routed experts and back
            after (Muse Spark's `pre_expert_proj` to `moe_hidden_size`): the experts' input width
            (`MoELayer.expert_input_size`) is not the hidden size. Without it such experts are refused.
        extended_count_attrs: router attributes that cache the routed count plus the extra rows (Zaya's
            `num_router_classes`, counting its skip expert); updated on removal.
        gate: a short description of the gate function, for `inspect` and model cards.
        renormalises: whether the gate weights of a token's chosen experts stay the same when experts it
            did not choose are removed: a softmax renormalised over the top-k, or per-expert sigmoid
            scores (then removing unused experts leaves outputs unchanged for tokens that never used them).
        shared_attrs: always-on shared experts inside the block, or beside it in the decoder layer
            (granitemoeshared's `shared_mlp`); never expert-pruned.
        group_routing: DeepSeek-style group-limited routing needs equal-size groups after removal.
        min_per_group: experts each group must keep (DeepSeek-V3 scores a group by its top-2).
    """

    name: str
    count_fields: tuple[str, ...]
    top_k_fields: tuple[str, ...] = ("num_experts_per_tok",)
    router_attr: str = "gate"
    router_weight: str = "weight"
    router_inputs: tuple[str, ...] = ()
    router_takes_batch: bool = False
    router_extra_rows: Callable[[PretrainedConfig], int] = lambda _: 0
    extended_count_attrs: tuple[str, ...] = ()
    experts_read_projection: bool = False
    naee_refusal: str = ""
    gate: str = "softmax -> top-k"
    renormalises: Callable[[PretrainedConfig], bool] = always
    shared_attrs: tuple[str, ...] = ()
    group_routing: Callable[[PretrainedConfig], bool] = never
    min_per_group: int = 1
    notes: tuple[str, ...] = field(default_factory=tuple)


def n_group_set(config: PretrainedConfig) -> bool:
    return getattr(config, "n_group", None) is not None


def v3_like(name: str, count_fields: tuple[str, ...] = ("n_routed_experts",), **facts) -> Family:
    """A DeepSeek-V3-style MoE: sigmoid router `gate` with a correction bias, group-limited top-k, shared_experts.

    Its gate weights are the chosen experts' own sigmoid scores (renormalised among them if
    norm_topk_prob), so removing experts a token did not choose leaves them unchanged.
    """
    defaults = dict(
        gate="sigmoid + correction bias -> group-limited top-k (renormalise if norm_topk_prob), scaled",
        shared_attrs=("shared_experts",),
        group_routing=always,
        min_per_group=2,
    )
    return Family(name, count_fields, **{**defaults, **facts})


INKLING_NAEE = "the shared experts' gates depend on which routed experts are chosen, which naee does not model"


def n_shared_experts(config: PretrainedConfig) -> int:
    return int(getattr(config, "n_shared_experts", 0) or 0)


def one(_: PretrainedConfig) -> int:
    return 1


PROJECTED_NAEE = "its experts read a projection of the block's input (moe_hidden_size), which naee does not model"
ZAYA_NAEE = "its router also reads the previous layer's router states, which naee's per-layer router does not receive"


def deepseek_v2_groups(config: PretrainedConfig) -> bool:
    return getattr(config, "topk_method", "greedy") == "group_limited_greedy"
