"""What every scoring method shares: its input (`ScoringContext`), its output, and keep-set selection.

A method maps a context to one `LayerScores` per MoE layer: a score per expert (higher = more worth
keeping) and the sorted keep-set. Methods that rank experts use `select_keep`; methods that choose a
set directly (NAEE, STUN) return it. Every layer keeps `round(E * (1 - expert_sparsity))` experts, and
families with group-limited routing (DeepSeek) keep the same number in every group (docs/algorithms.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from moeprune.arch import MoEAdapter, MoELayer
from moeprune.catalog.scorers import SCORERS
from moeprune.checkpoint.source import ModelSource, as_source
from moeprune.errors import MoepruneError
from moeprune.params import check_fraction
from moeprune.profiling import Profile


@dataclass
class LayerScores:
    """One layer's result: `scores` per expert (higher = keep), the sorted `keep` indices and, for STUN's
    selective reconstruction, `merge`: kept expert -> the cluster members whose mean replaces it."""

    scores: list[float]
    keep: list[int]
    merge: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class ScoringContext:
    """Everything a scoring method may use.

    Weights are read only through `source`: `source.materialized(router_modules(adapter))` for router
    rows, `source.materialized([layer.experts])` or `source.block(i)` for one layer. A streamed source
    (what the `score` stage opens) holds every other tensor on the meta device, so a method reads no
    more than it asks for.

    Attributes:
        model: the model to prune (eval mode; streamed: a skeleton whose tensors are read on demand).
        adapter: its MoE adapter.
        expert_sparsity: fraction of routed experts to remove in every MoE layer, in [0, 1).
        profile: activation profile of `model` (frequency, soft-frequency, reap, stun with lambda2).
        reference: the pretrained model `model` was fine-tuned from (router-change), loaded or a `ModelSource`.
        batches: calibration batches (naee).
        seed: seed of random choices.
        options: method options (e.g. naee `max_combinations`, stun `lambda2`, `global_budget`).
        forward_passes: calibration forward passes the method spent (methods add to it).
        extra: method-specific facts for the scores file (e.g. stun per-layer counts).
        source: where the weights come from (default: `model` as loaded).
        method: the scoring method running (set when the registry calls it; `option` reads its declaration).
    """

    model: nn.Module
    adapter: MoEAdapter
    expert_sparsity: float
    profile: Profile | None = None
    reference: nn.Module | ModelSource | None = None
    batches: list[dict[str, Tensor]] | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    forward_passes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    source: ModelSource | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        check_sparsity(self.expert_sparsity)
        if self.source is None:
            self.source = as_source(self.model)

    def keep_count(self, layer: MoELayer) -> int:
        """Experts layer `layer` keeps: round(E * (1 - expert_sparsity)), at least 1."""
        return keep_count(layer.num_experts, self.expert_sparsity)

    def groups(self, layer: MoELayer) -> int:
        """Number of routing groups of the layer (1 unless the family routes by groups)."""
        if not self.adapter.family.group_routing(self.adapter.config):
            return 1
        return int(getattr(self.adapter.config, "n_group", 1) or 1)

    def group_ranges(self, layer: MoELayer) -> list[range]:
        """The routing groups of the layer, checked against the kept count and the family's minimum."""
        keep = self.keep_count(layer)
        ranges = group_slices(layer.num_experts, self.groups(layer), keep, layer.index)
        minimum = self.adapter.family.min_per_group if len(ranges) > 1 else 1
        if keep // len(ranges) < minimum:
            raise MoepruneError(
                f"layer {layer.index}: {self.adapter.family.name} needs at least {minimum} kept experts in each of "
                f"its {len(ranges)} routing groups, but expert sparsity {self.expert_sparsity} keeps "
                f"{keep // len(ranges)}; choose a lower expert sparsity"
            )
        return ranges

    def require_profile(self, method: str) -> Profile:
        if self.profile is None:
            raise MoepruneError(
                f"method '{method}' needs an activation profile; run `moeprune profile` and pass --profile DIR"
            )
        return self.profile

    def require_reference(self, method: str) -> ModelSource:
        if self.reference is None:
            raise MoepruneError(
                f"method '{method}' needs the pretrained checkpoint the model was fine-tuned from; pass --reference DIR"
            )
        return as_source(self.reference)

    def require_batches(self, method: str) -> list[dict[str, Tensor]]:
        if not self.batches:
            raise MoepruneError(f"method '{method}' needs calibration data; pass --calib F (from `moeprune calibrate`)")
        return self.batches

    def option(self, name: str) -> Any:
        """A method option, its declared default (`moeprune.catalog.scorers`) when not given.

        Reading an option the running method does not declare is a programming error (KeyError).
        """
        if self.method is None:
            raise RuntimeError("ScoringContext.option is read outside a registered scoring method")
        default = SCORERS.get(self.method).default(name)
        return self.options.get(name, default)


def router_modules(adapter: MoEAdapter) -> list[nn.Module]:
    """The router of every MoE layer (what router-only methods materialise)."""
    return [layer.router for layer in adapter.layers]


def check_sparsity(expert_sparsity: float) -> None:
    """MoepruneError unless 0 <= expert_sparsity < 1 (`validation.check_fraction`)."""
    check_fraction(expert_sparsity, "expert sparsity", "pass the fraction of experts to remove, e.g. 0.5")


def keep_count(num_experts: int, expert_sparsity: float) -> int:
    """round(E * (1 - expert_sparsity)), at least 1."""
    return max(1, round(num_experts * (1.0 - float(expert_sparsity))))


def group_slices(num_experts: int, groups: int, keep: int, layer_index: int = -1) -> list[range]:
    """The expert ranges of `groups` equal routing groups; MoepruneError if `keep` cannot split evenly."""
    if groups <= 1:
        return [range(num_experts)]
    if num_experts % groups or keep % groups:
        raise MoepruneError(
            f"layer {layer_index}: the family routes by {groups} groups, so the kept count must be divisible by "
            f"{groups}, but {keep} of {num_experts} experts are kept; choose an expert sparsity that keeps a multiple "
            f"of {groups}"
        )
    size = num_experts // groups
    return [range(g * size, (g + 1) * size) for g in range(groups)]


def top_indices(scores: Tensor, count: int) -> list[int]:
    """Indices of the `count` highest scores (ties: the lower index first), sorted ascending."""
    order = torch.argsort(-scores.double(), stable=True)
    return sorted(order[:count].tolist())


def select_keep(scores: Tensor, keep: int, groups: int = 1, layer_index: int = -1) -> list[int]:
    """The keep-set: top `keep` scores, or the top `keep / groups` within every routing group."""
    slices = group_slices(scores.numel(), groups, keep, layer_index)
    return select_in_ranges(scores, keep, slices)


def select_in_ranges(scores: Tensor, keep: int, slices: list[range]) -> list[int]:
    """The top `keep / len(slices)` scores within every range of experts, sorted."""
    per_group = keep // len(slices)
    kept: list[int] = []
    for members in slices:
        kept += [members.start + i for i in top_indices(scores[members.start : members.stop], per_group)]
    return sorted(kept)


def ranked_layer_scores(ctx: ScoringContext, scores: dict[int, Tensor]) -> dict[int, LayerScores]:
    """Turn per-layer score vectors into `LayerScores` with the top-score keep-sets."""
    result = {}
    for layer in ctx.adapter.layers:
        vector = scores[layer.index].double()
        keep = select_in_ranges(vector, ctx.keep_count(layer), ctx.group_ranges(layer))
        result[layer.index] = LayerScores([float(v) for v in vector], keep)
    return result


def profile_stat(ctx: ScoringContext, method: str, name: str) -> dict[int, Tensor]:
    """One statistic of the profile for every MoE layer, checked against the model's expert counts."""
    profile = ctx.require_profile(method)
    stats = {}
    for layer in ctx.adapter.layers:
        vector = profile.layer(layer.index)[name]
        if vector.shape[0] != layer.num_experts:
            raise MoepruneError(
                f"the profile's layer {layer.index} has {vector.shape[0]} experts but the model has "
                f"{layer.num_experts}; profile this model again"
            )
        stats[layer.index] = vector
    return stats
