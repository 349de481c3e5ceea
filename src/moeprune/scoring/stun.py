"""STUN expert pruning (Lee et al., 2024, "STUN: Structured-Then-Unstructured Pruning for Scalable MoE Pruning",
https://arxiv.org/abs/2409.06211).

O(1) in the number of experts: no forward pass in the default router-only form.

1. Behaviour distance between experts i, j of a layer, with W_i the router rows and a_ij the profile's
   co-activation counts:  d_ij = lambda1 * ||W_i - W_j||_2 / ||W||_F - lambda2 * a_ij / mean(a)
   (defaults lambda1 = 1, lambda2 = 0; lambda2 > 0 needs --profile).
2. Greedy agglomerative clustering with complete linkage: repeatedly take the closest pair of experts
   whose clusters are not yet joined and join the clusters when every cross pair is closer than the
   threshold; this merges clusters in order of their largest cross distance. Uniform mode (default)
   stops at `keep` clusters per layer (per routing group for DeepSeek); global-budget mode
   (`global_budget: true`) searches the threshold tau (doubling, then bisection) until the kept
   total over all layers reaches the target, so layers keep different counts (recorded per layer).
3. Each cluster keeps the member whose weights (all expert matrices, flattened) are closest to the
   cluster mean. Scores: a representative scores the size of its cluster, every other expert 0.
4. Selective reconstruction (`reconstruct: true`, off by default): a cluster of 2 to kappa - 1 members
   (kappa = 3) is instead replaced by the mean of its members' weights and router rows. The scores file
   records it as `merge: {representative: members}` and `prune-experts` averages before removing.

    score: {method: stun, expert_sparsity: 0.5}
    # options: {lambda1: 1.0, lambda2: 0.0, global_budget: false, reconstruct: false, kappa: 3}
"""

from __future__ import annotations

import torch
from torch import Tensor

from moeprune.arch import MoELayer
from moeprune.errors import MoepruneError
from moeprune.scoring import implements
from moeprune.scoring.base import LayerScores, ScoringContext, router_modules

BISECTION_STEPS = 100
COLUMN_BLOCK = 1 << 20  # columns of the stacked expert tensors read at once (8 MB per member in float64)


def behaviour_distance(
    router: Tensor, coactivation: Tensor | None, lambda1: float = 1.0, lambda2: float = 0.0
) -> Tensor:
    """`[E, E]` float64 distances from router rows `[E, R]` and (optionally) co-activation counts `[E, E]`.

    An MLP router's rows are its output projection's (`Family.router_weight`; Zaya's `router_mlp.out_proj`).
    """
    weights = router.detach().double().cpu()
    distance = lambda1 * torch.cdist(weights, weights) / weights.norm().clamp(min=1e-12)
    if lambda2 and coactivation is not None:
        counts = coactivation.double().cpu()
        off_diagonal = counts[~torch.eye(counts.shape[0], dtype=torch.bool)]
        mean = off_diagonal.mean() if off_diagonal.numel() else torch.tensor(0.0, dtype=torch.float64)
        if mean > 0:
            distance = distance - lambda2 * counts / mean
    return distance


def complete_linkage(
    distance: Tensor, clusters: int = 1, threshold: float | None = None
) -> tuple[list[list[int]], list[float]]:
    """Agglomerative clustering with complete linkage on `distance [n, n]`.

    Merges the two clusters with the smallest largest-cross-distance until `clusters` remain, or
    (with `threshold`) until no pair of clusters is closer than it.

    Returns:
        The clusters (sorted member lists, ordered by first member) and the merge heights in order.
    """
    size = distance.shape[0]
    linkage = distance.double().clone()
    linkage.fill_diagonal_(float("inf"))
    members: dict[int, list[int]] = {i: [i] for i in range(size)}
    heights: list[float] = []
    while len(members) > max(clusters, 1):
        flat = int(torch.argmin(linkage))  # ties: the first pair in row-major order
        a, b = sorted(divmod(flat, size))
        height = float(linkage[a, b])
        if threshold is not None and not height < threshold:
            break
        heights.append(height)
        members[a] = sorted(members[a] + members.pop(b))
        merged = torch.maximum(linkage[a], linkage[b])
        linkage[a], linkage[:, a] = merged, merged
        linkage[a, a] = float("inf")
        linkage[b], linkage[:, b] = float("inf"), float("inf")
    return sorted(members.values()), heights


def representative(layer: MoELayer, cluster: list[int]) -> int:
    """The member whose flattened expert weights (every matrix) are closest to the cluster's mean.

    Read from the stacked expert tensors a column block at a time: no float64 copy of whole experts
    (hundreds of MB each in released models) is made, and the cost is linear in the members.
    """
    if len(cluster) == 1:
        return cluster[0]
    members = torch.tensor(cluster, device=layer.down_proj.device)
    squared = torch.zeros(len(cluster), dtype=torch.float64, device=members.device)
    with torch.no_grad():
        for param in (layer.up_param, layer.down_proj):  # gate and up (or up alone), then down: every matrix
            flat = param.detach().reshape(layer.num_experts, -1)
            for start in range(0, flat.shape[1], COLUMN_BLOCK):
                block = flat[members, start : start + COLUMN_BLOCK].double()
                squared += (block - block.mean(dim=0)).pow(2).sum(dim=1)
    return cluster[int(torch.argmin(squared))]


def _layer_result(ctx: ScoringContext, layer: MoELayer, clusters: list[list[int]], kappa: int) -> LayerScores:
    """Representatives and scores; clusters of 2..kappa-1 members are merged into their representative.

    The layer's experts are read here, one layer at a time, and only when a cluster has several members.
    """
    scores = [0.0] * layer.num_experts
    keep, merge = [], {}
    experts = [layer.experts] if any(len(cluster) > 1 for cluster in clusters) else []
    with ctx.source.materialized(experts):
        chosen_per_cluster = [representative(layer, cluster) for cluster in clusters]
    for cluster, chosen in zip(clusters, chosen_per_cluster, strict=True):
        scores[chosen] = float(len(cluster))
        keep.append(chosen)
        if 1 < len(cluster) < kappa:
            merge[chosen] = list(cluster)
    return LayerScores(scores, sorted(keep), dict(sorted(merge.items())))


def _kappa(ctx: ScoringContext) -> int:
    """Clusters smaller than this are reconstructed by averaging (0: selective reconstruction off)."""
    if not ctx.option("reconstruct"):
        return 0
    kappa = int(ctx.option("kappa"))
    if kappa < 2:
        raise MoepruneError(f"stun option kappa={kappa} must be at least 2 (clusters of 2..kappa-1 are merged)")
    return kappa


def _distances(ctx: ScoringContext) -> dict[int, Tensor]:
    lambda1 = float(ctx.option("lambda1"))
    lambda2 = float(ctx.option("lambda2"))
    profile = ctx.require_profile("stun with lambda2 > 0") if lambda2 else None
    return {
        layer.index: behaviour_distance(
            layer.router_weight, profile.layer(layer.index)["coactivation"] if profile else None, lambda1, lambda2
        )
        for layer in ctx.adapter.layers
    }


def _uniform(ctx: ScoringContext, distances: dict[int, Tensor]) -> dict[int, LayerScores]:
    kappa = _kappa(ctx)
    result = {}
    for layer in ctx.adapter.layers:
        ranges = ctx.group_ranges(layer)
        per_group = ctx.keep_count(layer) // len(ranges)
        clusters = []
        for members in ranges:
            sub = distances[layer.index][members.start : members.stop, members.start : members.stop]
            found, _ = complete_linkage(sub, clusters=per_group)
            clusters += [[members.start + i for i in cluster] for cluster in found]
        result[layer.index] = _layer_result(ctx, layer, clusters, kappa)
    return result


def kept_total(heights: dict[int, list[float]], sizes: dict[int, int], tau: float) -> int:
    """Clusters left over all layers when merging stops at threshold `tau` (heights are non-decreasing)."""
    return sum(sizes[i] - sum(1 for h in hs if h < tau) for i, hs in heights.items())


def search_threshold(heights: dict[int, list[float]], sizes: dict[int, int], target: int) -> float:
    """tau with `kept_total(tau) == target` when reachable (else the closest total below): doubling, bisection."""
    every = [h for hs in heights.values() for h in hs]
    low = min(every, default=0.0)
    if kept_total(heights, sizes, low) <= target:
        return low
    step = 1.0
    while kept_total(heights, sizes, low + step) > target:
        step *= 2.0
    high = low + step
    for _ in range(BISECTION_STEPS):
        if kept_total(heights, sizes, high) == target:
            break
        middle = (low + high) / 2.0
        if kept_total(heights, sizes, middle) > target:
            low = middle
        else:
            high = middle
    return high


def _global(ctx: ScoringContext, distances: dict[int, Tensor]) -> dict[int, LayerScores]:
    if any(ctx.groups(layer) > 1 for layer in ctx.adapter.layers):
        raise MoepruneError(
            f"stun's global-budget mode cannot keep {ctx.adapter.family.name}'s routing groups equal; "
            "use the uniform mode (global_budget: false)"
        )
    sizes = {layer.index: layer.num_experts for layer in ctx.adapter.layers}
    heights = {i: complete_linkage(d)[1] for i, d in distances.items()}
    target = sum(ctx.keep_count(layer) for layer in ctx.adapter.layers)
    tau = search_threshold(heights, sizes, target)
    kappa = _kappa(ctx)
    result = {}
    for layer in ctx.adapter.layers:
        clusters, _ = complete_linkage(distances[layer.index], threshold=tau)
        result[layer.index] = _layer_result(ctx, layer, clusters, kappa)
    counts = {str(i): len(r.keep) for i, r in result.items()}
    ctx.extra["stun"] = {
        "mode": "global",
        "tau": tau,
        "target_total": target,
        "kept_total": sum(counts.values()),
        "keep_per_layer": counts,
    }
    return result


@implements("stun")
def score_stun(ctx: ScoringContext) -> dict[int, LayerScores]:
    """Cluster experts by router-row (and co-activation) distance; keep one representative per cluster."""
    with ctx.source.materialized(router_modules(ctx.adapter)):
        distances = _distances(ctx)
    if ctx.option("global_budget"):
        return _global(ctx, distances)
    ctx.extra["stun"] = {"mode": "uniform"}
    result = _uniform(ctx, distances)
    ctx.extra["stun"]["merged_clusters"] = sum(len(entry.merge) for entry in result.values())
    return result
