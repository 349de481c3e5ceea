"""Activation profiling: one pass over calibration data records what every routed expert does.

transformers' fused experts hide per-expert outputs from hooks, so profiling registers its own experts
implementation, `moeprune_profile` (docs/transformers-notes.md, "Profiling through the experts
interface"). It runs the eager implementation's per-expert math (tokens sorted by expert once; the gate
weighting, the output accumulation and the statistics batched over all experts), so it returns the eager
output bit for bit, and accumulates, per MoE layer:

    frequency [E]          tokens for which e is among the top_k
    soft_frequency [E]     sum over tokens of the gate weight g_e(x) (0 where e is not chosen)
    coactivation [E, E]    tokens for which i and j are both chosen (the diagonal is `frequency`)
    reap [E]               mean over tokens routed to e of g_e(x) * ||f_e(x)||_2 (0 if never routed)
    output_norm [E]        mean over tokens routed to e of ||f_e(x)||_2
    router_logit_mean/std  per-expert mean and std of the router logits over all tokens (router hook)
    tokens                 tokens that passed through the layer
    wanda_in_sq [E, H]     sum of x_j^2 per input feature over the tokens routed to e (gate/up input; H is
                           the experts' input width, `expert_input_size`: moe_hidden_size for Muse Spark)
    wanda_down_sq [E, I]   the same for the input of down_proj

    with profiling(model) as accumulators:   # sets the implementation, restores the previous one
        model(input_ids=batch)
    profile = profile_model(model, batches)  # the same, over every batch, with a progress bar
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moeprune.arch import get_adapter
from moeprune.checkpoint import layerwise
from moeprune.checkpoint.source import ModelSource, as_source
from moeprune.errors import MoepruneError

PROFILE_IMPLEMENTATION = "moeprune_profile"
PROFILE_FILE = "profile.safetensors"
SUMMARY_FILE = "profile.json"
STAT_NAMES = (
    "frequency",
    "soft_frequency",
    "coactivation",
    "reap",
    "output_norm",
    "router_logit_mean",
    "router_logit_std",
    "tokens",
    "wanda_in_sq",
    "wanda_down_sq",
)
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")

# id(experts module) -> accumulator; filled only inside `profiling(model)`.
_ACTIVE: dict[int, ExpertStatsAccumulator] = {}


@dataclass
class ExpertStatsAccumulator:
    """Running sums for one MoE layer (float64; see the module docstring for each statistic)."""

    num_experts: int
    hidden_size: int
    intermediate_size: int
    device: torch.device | str = "cpu"
    tokens: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        e, h, i = self.num_experts, self.hidden_size, self.intermediate_size
        shapes = {
            "frequency": (e,),
            "soft_frequency": (e,),
            "coactivation": (e, e),
            "gated_norm": (e,),
            "output_norm": (e,),
            "logit_sum": (e,),
            "logit_sq": (e,),
            "logit_tokens": (1,),
            "wanda_in_sq": (e, h),
            "wanda_down_sq": (e, i),
        }
        # Sums stay on the model's device (no per-expert host sync); float64 unless the device lacks it (MPS).
        dtype = torch.float32 if torch.device(self.device).type == "mps" else torch.float64
        self.sums = {name: torch.zeros(shape, dtype=dtype, device=self.device) for name, shape in shapes.items()}

    def add_routing(self, top_k_index: Tensor, top_k_weights: Tensor) -> None:
        """Count one batch's routing: `top_k_index [T, k]`, `top_k_weights [T, k]`."""
        dtype = self.sums["frequency"].dtype
        chosen = F.one_hot(top_k_index.long(), self.num_experts).to(dtype)  # [T, k, E]
        hits = chosen.sum(dim=1)  # [T, E], 0/1
        self.sums["frequency"] += hits.sum(dim=0)
        self.sums["soft_frequency"] += (chosen * top_k_weights.to(dtype).unsqueeze(-1)).sum(dim=(0, 1))
        self.sums["coactivation"] += hits.T @ hits
        self.tokens += top_k_index.shape[0]

    def add_experts(self, inputs: Tensor, experts: Tensor, intermediate: Tensor, output: Tensor, gates: Tensor) -> None:
        """One batch's routed rows, all experts at once.

        Args:
            inputs: `[S, H]` the token states each (token, expert) pair received.
            experts: `[S]` the expert of each pair.
            intermediate: `[S, I]` the input of down_proj.
            output: `[S, H]` the expert outputs (no gate weight).
            gates: `[S]` the gate weights.
        """
        dtype = self.sums["output_norm"].dtype
        norms = output.detach().float().norm(dim=-1).to(dtype)  # [S]
        self.sums["output_norm"].index_add_(0, experts, norms)
        self.sums["gated_norm"].index_add_(0, experts, norms * gates.detach().to(dtype))
        # One batch's sums of squares in float32 (cheap), accumulated across batches in float64.
        for name, rows in (("wanda_in_sq", inputs), ("wanda_down_sq", intermediate)):
            squares = rows.detach().float().pow(2)
            batch = torch.zeros(self.sums[name].shape, dtype=squares.dtype, device=squares.device)
            self.sums[name] += batch.index_add_(0, experts, squares).to(dtype)

    def add_logits(self, logits: Tensor) -> None:
        """Router logits `[T, E]` of one batch (a router that also scores extra classes after the routed experts,
        Zaya's skip expert, returns `[T, E + n]`: the extra columns are left out)."""
        width = logits.shape[-1] if logits.dim() > 1 else self.num_experts
        flat = logits.detach().reshape(-1, width)[:, : self.num_experts].to(self.sums["logit_sum"].dtype)
        self.sums["logit_sum"] += flat.sum(dim=0)
        self.sums["logit_sq"] += flat.pow(2).sum(dim=0)
        self.sums["logit_tokens"] += flat.shape[0]

    def result(self) -> dict[str, Tensor]:
        """The profile statistics of this layer (names in STAT_NAMES)."""
        s = {name: tensor.detach().to("cpu", torch.float64, copy=True) for name, tensor in self.sums.items()}
        routed = s["frequency"].clamp(min=1)
        logit_tokens = s["logit_tokens"].clamp(min=1)
        mean = s["logit_sum"] / logit_tokens
        var = (s["logit_sq"] / logit_tokens - mean.pow(2)).clamp(min=0)
        return {
            "frequency": s["frequency"],
            "soft_frequency": s["soft_frequency"],
            "coactivation": s["coactivation"],
            "reap": s["gated_norm"] / routed,
            "output_norm": s["output_norm"] / routed,
            "router_logit_mean": mean,
            "router_logit_std": var.sqrt(),
            "tokens": torch.tensor(self.tokens, dtype=torch.int64),
            "wanda_in_sq": s["wanda_in_sq"],
            "wanda_down_sq": s["wanda_down_sq"],
        }


def _linear(module: nn.Module, weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    return F.linear(x, weight.transpose(0, 1) if module.is_transposed else weight, bias)


def _sorted_experts_forward(module: nn.Module, x: Tensor, counts: list[int]) -> tuple[Tensor, Tensor]:
    """(intermediate `[S, I]`, output `[S, H]`) of rows sorted by expert, the math of the eager implementation.

    Each expert's rows are one slice of `x` (`counts` rows each, in expert order); the weights are split
    with one `unbind` per matrix instead of one index per expert.
    """
    has_bias = getattr(module, "has_bias", False)
    up = module.gate_up_proj if module.has_gate else module.up_proj
    up_bias = (module.gate_up_proj_bias if module.has_gate else module.up_proj_bias) if has_bias else None
    ups, downs = up.unbind(0), module.down_proj.unbind(0)
    up_biases = up_bias.unbind(0) if up_bias is not None else [None] * len(counts)
    down_biases = module.down_proj_bias.unbind(0) if has_bias else [None] * len(counts)
    post_norm = getattr(module, "has_post_expert_norm", False)
    intermediates, outputs = [], []
    for expert, rows in enumerate(x.split(counts)):
        if not counts[expert]:
            continue
        projected = _linear(module, ups[expert], up_biases[expert], rows)
        intermediate = module._apply_gate(projected) if module.has_gate else module.act_fn(projected)
        output = _linear(module, downs[expert], down_biases[expert], intermediate)
        intermediates.append(intermediate)
        outputs.append(module.post_expert_norm(output) if post_norm else output)
    return torch.cat(intermediates), torch.cat(outputs)


def _routed_pairs(top_k_index: Tensor, num_experts: int) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """The (token, expert) pairs grouped by expert, in the order eager's `torch.where` visits them.

    Returns:
        experts `[S]` (ascending), token_idx `[S]`, top_k_pos `[S]` and the pair count per expert
        (`num_experts + 1` entries; the last counts the expert-parallel sentinel). Within an expert,
        pairs are ordered by (top-k position, token), as `torch.where(expert_mask[e])` returns them.
    """
    tokens = top_k_index.shape[0]
    flat = top_k_index.transpose(0, 1).reshape(-1)  # [k * T], index = pos * T + token
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=num_experts + 1).tolist()
    return flat[order], order % tokens, order // tokens, counts


def profile_experts_forward(
    self: nn.Module, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor
) -> Tensor:
    """The `moeprune_profile` experts implementation: eager output, statistics on the side.

    The (token, expert) pairs are sorted by expert once (`_routed_pairs`), so each expert's rows are one
    slice of a single gather instead of a scan of the whole routing mask per expert. The per-expert matmuls
    are the eager implementation's; one `index_add_` over the rows in expert order adds each token's
    expert outputs in the order eager's per-expert `index_add_` calls do (bitwise-equal results). The
    statistics of all experts are accumulated in one batched call.

    Args:
        self: the stacked experts module.
        hidden_states: `[T, H]` token states entering the experts.
        top_k_index: `[T, k]` chosen experts per token.
        top_k_weights: `[T, k]` their gate weights.

    Returns:
        `[T, H]`, the gate-weighted sum of the chosen experts' outputs (as eager computes it).
    """
    accumulator = _ACTIVE.get(id(self))
    if accumulator is not None:
        accumulator.add_routing(top_k_index, top_k_weights)
    final = torch.zeros_like(hidden_states)
    with torch.no_grad():
        experts, token_idx, top_k_pos, counts = _routed_pairs(top_k_index, self.num_experts)
        routed = sum(counts[: self.num_experts])  # the expert-parallel sentinel's pairs sort last
        token_idx, experts = token_idx[:routed], experts[:routed]
    gates = top_k_weights[token_idx, top_k_pos[:routed]]
    inputs = hidden_states[token_idx]
    if routed:
        intermediate, output = _sorted_experts_forward(self, inputs, counts[: self.num_experts])
        final.index_add_(0, token_idx, (output * gates[:, None]).to(final.dtype))
        if accumulator is not None:
            accumulator.add_experts(inputs, experts, intermediate, output, gates)
    return final


def register_profile_implementation() -> None:
    """Register `moeprune_profile` with transformers' experts interface (process-wide, once)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

    if PROFILE_IMPLEMENTATION not in ALL_EXPERTS_FUNCTIONS:
        ExpertsInterface.register(PROFILE_IMPLEMENTATION, profile_experts_forward)


@contextlib.contextmanager
def profiling(model: nn.Module, device: torch.device | None = None) -> Iterator[dict[int, ExpertStatsAccumulator]]:
    """Route `model`'s experts through `moeprune_profile`; yield layer index -> accumulator.

    The sums live on `device` (default: beside each router). The previous experts implementation and
    the router hooks are restored on exit.
    """
    register_profile_implementation()
    adapter = get_adapter(model)
    accumulators = {
        layer.index: ExpertStatsAccumulator(
            layer.num_experts,
            layer.expert_input_size,
            layer.intermediate_size,
            device or layer.router_weight.device,
        )
        for layer in adapter.layers
    }
    previous = model.get_experts_implementation()
    handles = [layer.router.register_forward_hook(_logit_hook(accumulators[layer.index])) for layer in adapter.layers]
    try:
        model.set_experts_implementation(PROFILE_IMPLEMENTATION)
        for layer in adapter.layers:
            if layer.experts.config._experts_implementation != PROFILE_IMPLEMENTATION:
                raise MoepruneError(
                    f"{type(model).__name__} did not accept the '{PROFILE_IMPLEMENTATION}' experts implementation; "
                    "profiling needs experts built with transformers' @use_experts_implementation"
                )
            _ACTIVE[id(layer.experts)] = accumulators[layer.index]
        yield accumulators
    finally:
        for layer in adapter.layers:
            _ACTIVE.pop(id(layer.experts), None)
        for handle in handles:
            handle.remove()
        model.set_experts_implementation(previous)


def _logit_hook(accumulator: ExpertStatsAccumulator):
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        logits = output[0] if isinstance(output, tuple) else output
        accumulator.add_logits(logits)

    return hook


@dataclass
class Profile:
    """Per-MoE-layer statistics of one profiling pass.

    Attributes:
        layers: decoder layer index -> statistic name (STAT_NAMES) -> tensor.
        summary: what `profile.json` holds (tokens, seconds, calibration sha256, ...).
    """

    layers: dict[int, dict[str, Tensor]]
    summary: dict[str, Any] = field(default_factory=dict)

    def layer(self, index: int) -> dict[str, Tensor]:
        """The statistics of one layer; MoepruneError if the profile lacks it."""
        if index not in self.layers:
            raise MoepruneError(
                f"the profile has no MoE layer {index} (it has {sorted(self.layers)}); "
                "profile this model again with `moeprune profile`"
            )
        return self.layers[index]


def forward_batch(model: nn.Module, batch: dict[str, Tensor]) -> Any:
    """One no-grad forward pass of a calibration batch (no KV cache for causal LMs)."""
    with torch.no_grad():
        return model(**layerwise.model_inputs(batch, model))


def profile_model(model: nn.Module | ModelSource, batches: Iterable[dict[str, Tensor]]) -> Profile:
    """Run every calibration batch through the model once and collect the per-layer statistics.

    `model`: a loaded model, or a `ModelSource` (a streamed one reads each decoder layer once; its blocks
    see the same inputs as in one full forward pass per batch).
    """
    start = time.perf_counter()
    source = as_source(model)
    batches = list(batches)
    with profiling(source.model, source.device) as accumulators:
        source.forward(batches, "profile")
    batch_count = len(batches)
    if batch_count == 0:
        raise MoepruneError("the calibration data is empty; make it with `moeprune calibrate --samples N`")
    layers = {index: acc.result() for index, acc in accumulators.items()}
    tokens = {index: int(stats["tokens"]) for index, stats in layers.items()}
    summary = {
        "layers": sorted(layers),
        "num_experts": {str(i): acc.num_experts for i, acc in accumulators.items()},
        "tokens": max(tokens.values()),
        "tokens_per_layer": {str(i): t for i, t in tokens.items()},
        "batches": batch_count,
        "model_type": getattr(source.model.config, "model_type", None),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return Profile(layers, summary)


def save_profile(profile: Profile, out_dir: str | Path) -> None:
    """Write `profile.safetensors`, `profile.json` and `plots/*.png` into `out_dir`."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"layers.{index}.{name}": tensor.contiguous()
        for index, stats in profile.layers.items()
        for name, tensor in stats.items()
    }
    save_file(tensors, str(out_dir / PROFILE_FILE), metadata={"format": "moeprune-profile"})
    (out_dir / SUMMARY_FILE).write_text(json.dumps(profile.summary, indent=2) + "\n")
    from moeprune.profiling.plots import plot_coactivation, plot_expert_load

    plot_expert_load(profile.layers, out_dir / "plots" / "expert_load.png")
    plot_coactivation(profile.layers, out_dir / "plots" / "coactivation.png")


def load_profile(directory: str | Path) -> Profile:
    """Read a profile written by `save_profile` (MoepruneError if missing or malformed)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / PROFILE_FILE
    if not path.is_file():
        raise MoepruneError(f"no {PROFILE_FILE} in '{directory}'; make the profile with `moeprune profile`")
    layers: dict[int, dict[str, Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "layers" or not parts[1].isdigit():
            raise MoepruneError(f"'{path}' holds an unexpected key '{key}'; remake it with `moeprune profile`")
        layers.setdefault(int(parts[1]), {})[parts[2]] = tensor
    summary_path = directory / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return Profile(layers, summary)
