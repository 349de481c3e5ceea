"""NAEE layer-wise expert enumeration (Lu et al., 2024, "Not All Experts are Equal", https://arxiv.org/abs/2402.14800).

Per MoE layer, with the block input X recorded in one layer-by-layer calibration pass, every keep-set K of
size `keep` is tried: the router sees only the experts in K (logits of the others are -inf, so they are
never chosen and the gate is computed over K, exactly as in the pruned model), the block output Z_K is
recomputed, and loss(K) = ||Z - Z_K||_F, accumulated in float64 over all calibration tokens. The
argmin is kept.

How the mask is applied generically: a copy of the family's own router gets only the rows (and biases,
correction biases, cached counts) of K, so group-limited, sigmoid and sparsemixer gates all behave as
after real removal; its indices are mapped back through K. Every covered block computes
Z = routed mixture + a part that does not depend on routing (shared experts), so
Z - Z_K = R - R_K with R the routed mixture; every expert's output is computed once per token and
each K costs one router call and a weighted gather.

Progressive variant (`--option progressive=true`, docs/algorithms.md): layers are decided in order and each
layer's keep-set is applied (its router restricted to K) before the layer produces the next one's inputs,
so later layers are scored on the hidden states of the already-pruned model. It costs one more block
forward per layer (recorded as 2 forward passes).

Cost: C(E, keep) keep-sets per layer (70 for 8 choose 4, 12,870 for 16 choose 8); above
`max_combinations` (default 5000) the method refuses. DeepSeek's group routing enumerates only the
keep-sets with the same count in every group. Scores: score_e = the best loss reachable without e
(higher = e matters more); the keep-set is the argmin itself.

    score: {method: naee, expert_sparsity: 0.5}      # options: {max_combinations: 5000, progressive: false}
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math

import torch
from torch import Tensor, nn

from moeprune.arch import MoELayer
from moeprune.checkpoint import layerwise
from moeprune.errors import MoepruneError
from moeprune.scoring import implements
from moeprune.scoring.base import LayerScores, ScoringContext

CHUNK_ELEMENTS = 1 << 24  # float64 elements of one chunk of all-expert outputs [E, t, H] (128 MiB)
_COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts")
_TOP_K_ATTRS = ("top_k", "num_experts_per_tok")


class SlicedRouter:
    """A copy of a router that can be restricted to a subset K of the experts (as after removal)."""

    def __init__(self, router: nn.Module, num_experts: int, extra_rows: int = 0):
        self.clone = copy.deepcopy(router)
        self.num_experts = num_experts
        self.extra_rows = extra_rows  # rows after the routed experts' (`Family.router_extra_rows`), always kept
        self.tensors = []  # (module, name, original tensor, dim, is parameter, has the extra rows)
        for module in self.clone.modules():
            for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
                if tensor is None:
                    continue
                dim = 1 if name == "e_score_correction_bias" and tensor.dim() == 2 else 0
                if tensor.dim() > dim and tensor.shape[dim] == num_experts:
                    self.tensors.append((module, name, tensor.detach(), dim, name in module._parameters, False))
                elif extra_rows and tensor.dim() > 0 and tensor.shape[0] == num_experts + extra_rows:
                    self.tensors.append((module, name, tensor.detach(), 0, name in module._parameters, True))
        self.top_k = [(m, a, getattr(m, a)) for m, a in self._int_attrs(_TOP_K_ATTRS, None)]
        self.counts = [(m, a) for m, a in self._int_attrs(_COUNT_ATTRS, num_experts)]
        self.linears = [
            m
            for m in self.clone.modules()
            if isinstance(m, nn.Linear) and m.out_features in (num_experts, num_experts + extra_rows)
        ]

    def _int_attrs(self, names: tuple[str, ...], equal_to: int | None) -> list[tuple[nn.Module, str]]:
        found = []
        for module in self.clone.modules():
            for attr in names:
                value = getattr(module, attr, None)
                if isinstance(value, int) and not isinstance(value, bool) and equal_to in (None, value):
                    found.append((module, attr))
        return found

    def restrict(self, keep: Tensor) -> nn.Module:
        """The router clone with only the experts `keep` (sorted indices); its indices are 0..len(keep)-1."""
        count = int(keep.numel())
        extra = torch.arange(self.num_experts, self.num_experts + self.extra_rows, device=keep.device)
        extended = torch.cat([keep, extra])
        for module, name, tensor, dim, is_parameter, has_extra in self.tensors:
            sliced = tensor.index_select(dim, (extended if has_extra else keep).to(tensor.device))
            if is_parameter:
                module._parameters[name] = nn.Parameter(sliced, requires_grad=False)
            else:
                module._buffers[name] = sliced
        for module, attr in self.counts:
            setattr(module, attr, count)
        for module in self.linears:
            module.out_features = count + (module.weight.shape[0] - count if self.extra_rows else 0)
        for module, attr, value in self.top_k:
            setattr(module, attr, min(value, count))
        return self.clone


class RestrictedRouter(nn.Module):
    """A router that routes among the experts `keep` only, reporting indices in the original numbering.

    Installed in place of a block's router, it makes the block compute exactly what the pruned block would
    (the logits of removed experts read -inf).
    """

    def __init__(self, slicer: SlicedRouter, keep: Tensor):
        super().__init__()
        self.inner = slicer.restrict(keep)
        self.keep = keep
        self.num_experts = slicer.num_experts

    def forward(self, hidden: Tensor, *router_inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Called as the block calls its router; per-expert `router_inputs` (a block-level correction bias)
        arrive for every expert and are sliced to the keep-set."""
        sliced = [tensor.index_select(-1, self.keep.to(tensor.device)) for tensor in router_inputs]
        logits_k, weights, index, *rest = self.inner(hidden, *sliced)  # rest: Inkling's shared-expert gates
        logits = logits_k.new_full((*logits_k.shape[:-1], self.num_experts), float("-inf"))
        logits[..., self.keep] = logits_k
        return (logits, weights, self.keep[index], *rest)


@contextlib.contextmanager
def routed_to(layer: MoELayer, keep: list[int]):
    """Inside the block, `layer`'s MoE block routes only to the experts `keep` (its router is swapped back after)."""
    name = next(name for name, child in layer.block.named_children() if child is layer.router)
    device = layer.router_weight.device
    slicer = SlicedRouter(layer.router, layer.num_experts, layer.extra_rows)
    restricted = RestrictedRouter(slicer, torch.tensor(keep, device=device))
    setattr(layer.block, name, restricted)
    try:
        yield
    finally:
        setattr(layer.block, name, layer.router)


def keep_sets(ranges: list[range], keep: int) -> list[tuple[int, ...]]:
    """Every keep-set of size `keep` with the same count in each range (one range: all C(E, keep))."""
    per_group = keep // len(ranges)
    choices = [itertools.combinations(members, per_group) for members in ranges]
    return [tuple(sorted(itertools.chain.from_iterable(parts))) for parts in itertools.product(*choices)]


def count_keep_sets(ranges: list[range], keep: int) -> int:
    """Number of keep-sets `keep_sets` would enumerate."""
    per_group = keep // len(ranges)
    return math.prod(math.comb(len(members), per_group) for members in ranges)


class BlockInputRecorder:
    """Records, while its decoder layer runs, what one MoE block's router and routed experts read: `[T, H]` each.

    Both are the block's input in most families; Gemma 4's router reads the layer's residual stream and its
    experts a normalised copy (forward pre-hooks on both modules).
    """

    def __init__(self, layer: MoELayer):
        self.router_parts: list[Tensor] = []
        self.expert_parts: list[Tensor] = []
        self.handles = [
            layer.router.register_forward_pre_hook(self._hook(self.router_parts), with_kwargs=True),
            layer.experts.register_forward_pre_hook(self._hook(self.expert_parts), with_kwargs=True),
        ]

    @staticmethod
    def _hook(into: list[Tensor]):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            into.append(hidden.detach().reshape(-1, hidden.shape[-1]))

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def finish(self) -> tuple[Tensor, Tensor]:
        """Remove the hooks; the router's and the experts' recorded inputs of every batch, concatenated
        (one tensor, twice, where they are equal)."""
        self.remove()
        router, experts = torch.cat(self.router_parts), torch.cat(self.expert_parts)
        self.router_parts, self.expert_parts = [], []
        return (router, router) if torch.equal(router, experts) else (router, experts)


def _mixture(outputs: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """Gate-weighted sum of the chosen experts: `outputs [t, E, H]`, `index/weights [t, k]` -> `[t, H]`."""
    rows = torch.arange(outputs.shape[0], device=outputs.device).unsqueeze(1)
    return (outputs[rows, index] * weights.to(outputs.dtype).unsqueeze(-1)).sum(dim=1)


def _all_expert_outputs(layer: MoELayer, hidden: Tensor) -> Tensor:
    """`[t, E, H]` float64: every expert's output for every token (no gate weight)."""
    return torch.stack([layer.run_expert(e, hidden) for e in range(layer.num_experts)], dim=1).double()


def enumerate_losses(
    layer: MoELayer, hidden: Tensor, candidates: list[tuple[int, ...]], expert_hidden: Tensor | None = None
) -> Tensor:
    """loss(K) = ||Z - Z_K||_F over all tokens of `hidden [T, H]` for every K in `candidates`: `[C]` float64.

    `hidden` is what the router reads; `expert_hidden` what the routed experts read, when it differs.
    """
    expert_hidden = hidden if expert_hidden is None else expert_hidden
    device = layer.router_weight.device
    dtype = layer.router_weight.dtype
    slicer = SlicedRouter(layer.router, layer.num_experts, layer.extra_rows)
    keep_tensors = [torch.tensor(k, dtype=torch.long, device=device) for k in candidates]
    squared = torch.zeros(len(candidates), dtype=torch.float64)
    chunk = max(1, CHUNK_ELEMENTS // (layer.num_experts * hidden.shape[1]))
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk):
            x = hidden[start : start + chunk].to(device=device, dtype=dtype)
            xe = x if expert_hidden is hidden else expert_hidden[start : start + chunk].to(device=device, dtype=dtype)
            outputs = _all_expert_outputs(layer, xe)  # [t, E, H]
            _, weights, index = layer.route(x)
            routed = _mixture(outputs, index, weights)  # R: the full model's routed mixture
            for n, keep in enumerate(keep_tensors):
                _, weights_k, index_k = layer.route(x, slicer.restrict(keep), keep)
                routed_k = _mixture(outputs, keep[index_k], weights_k)
                squared[n] += (routed - routed_k).pow(2).sum().cpu()
    return squared.sqrt()


def expert_scores(num_experts: int, candidates: list[tuple[int, ...]], losses: Tensor) -> list[float]:
    """score_e = the smallest loss among keep-sets without e (0 when every keep-set holds e)."""
    scores = []
    for expert in range(num_experts):
        without = [losses[n] for n, keep in enumerate(candidates) if expert not in keep]
        scores.append(float(min(without)) if without else 0.0)
    return scores


def _plan(ctx: ScoringContext) -> dict[int, list[range]]:
    limit = int(ctx.option("max_combinations"))
    if ctx.adapter.family.naee_refusal:
        raise MoepruneError(f"naee cannot score {ctx.adapter.family.name}: {ctx.adapter.family.naee_refusal}")
    plans = {}
    for layer in ctx.adapter.layers:
        ranges = ctx.group_ranges(layer)
        keep = ctx.keep_count(layer)
        count = count_keep_sets(ranges, keep)
        if count > limit:
            raise MoepruneError(
                f"naee would evaluate {count} keep-sets in layer {layer.index} (C({layer.num_experts}, {keep})), "
                f"above max_combinations={limit}: enumeration grows combinatorially with the expert count; "
                "use stun, reap or frequency, or raise the max_combinations option"
            )
        plans[layer.index] = ranges
    return plans


@implements("naee")
def score_naee(ctx: ScoringContext) -> dict[int, LayerScores]:
    """Keep, in every layer, the keep-set whose block output is closest to the unpruned one.

    One layer-by-layer pass (`layerwise.run`): each MoE block's inputs are recorded while its decoder
    layer propagates the calibration states, then its keep-sets are enumerated while the layer is in
    memory; a streamed source (`moeprune.checkpoint`) reads each layer from disk once.
    """
    plans = _plan(ctx)  # refuse before spending a forward pass
    batches = ctx.require_batches("naee")
    moe = {layer.index: layer for layer in ctx.adapter.layers}
    recorders: dict[int, BlockInputRecorder] = {}
    result, details = {}, {}

    def record(index: int, block: nn.Module, inputs) -> None:
        if index in moe:
            recorders[index] = BlockInputRecorder(moe[index])

    def enumerate_layer(index: int, block: nn.Module) -> None:
        if index not in moe:
            return
        layer = moe[index]
        candidates = keep_sets(plans[index], ctx.keep_count(layer))
        recorded = recorders.pop(index).finish()
        losses = enumerate_losses(layer, recorded[0], candidates, recorded[1])
        best = int(torch.argmin(losses))  # ties: the first keep-set in lexicographic order
        result[index] = LayerScores(expert_scores(layer.num_experts, candidates, losses), list(candidates[best]))
        details[str(index)] = {"keep_sets": len(candidates), "best_loss": float(losses[best])}

    progressive = bool(ctx.option("progressive"))
    source = ctx.source
    restriction = contextlib.ExitStack()

    def decide_first(index: int, block: nn.Module, inputs) -> None:
        """Progressive: enumerate before the block runs for the next layer, then route it to the keep-set."""
        if index not in moe:
            return
        record(index, block, inputs)
        layerwise.run_block(block, inputs)  # the block's MoE inputs, recorded
        enumerate_layer(index, block)
        restriction.enter_context(routed_to(moe[index], result[index].keep))

    try:
        if progressive:
            layerwise.run(
                source,
                batches,
                decide_first,
                description="naee: enumerate (progressive)",
                on_done=lambda index, block: restriction.close(),
            )
        else:
            layerwise.run(source, batches, record, description="naee: enumerate", on_done=enumerate_layer)
    finally:
        restriction.close()
        for recorder in recorders.values():
            recorder.remove()
    ctx.forward_passes += 2 if progressive else 1
    ctx.extra["naee"] = {"block_evaluations": sum(d["keep_sets"] for d in details.values()), "layers": details}
    return result
