"""One adapter for every MoE family built on transformers 5's stacked-expert layout.

transformers 5 stores a layer's routed experts as one module decorated with
`@use_experts_implementation`: `gate_up_proj [E, 2I, H]` (or `up_proj` when `has_gate` is False),
`down_proj [E, H, I]`, optional biases, and layout flags (`is_transposed`, `is_concatenated`).
The adapter finds those modules, their MoE block (the parent) and the block's router, and exposes
per layer what scoring and pruning need: router rows, gate function, expert matrices, one-expert
forward, shared experts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from moeprune.arch.families import Family, covered_families, get_family
from moeprune.arch.refused import not_covered_error, refusal
from moeprune.errors import MoepruneError

_ROUTER_BIAS_NAMES = ("e_score_correction_bias", "bias")


def _tensor_at(module: nn.Module, path: str) -> torch.Tensor | None:
    """The tensor at dotted `path` inside `module` (a parameter or buffer), or None."""
    value: object = module
    for part in path.split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def _is_stacked_experts(module: nn.Module) -> bool:
    up = getattr(module, "gate_up_proj", None)
    if up is None:
        up = getattr(module, "up_proj", None)
    return (
        isinstance(up, torch.Tensor) and up.dim() == 3 and isinstance(getattr(module, "down_proj", None), torch.Tensor)
    )


@dataclass
class MoELayer:
    """One MoE block: its router, its stacked routed experts and its shared experts.

    Attributes:
        index: index of the decoder layer (block) in the model's layer list.
        path: dotted module path of the MoE block (e.g. `model.layers.3.mlp`).
        block: the MoE block module.
        router: the router module; `router(hidden [T, H])` returns `(logits [T, E], weights [T, k], index [T, k])`
            (logits `[T, E + extra_rows]` where the router scores more than the routed experts).
        experts: the stacked experts module.
        family: family facts.
        decoder_layer: the decoder layer that holds the block (granitemoeshared keeps its shared MLP there).
    """

    index: int
    path: str
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    family: Family
    decoder_layer: nn.Module | None = None
    extra_rows: int = 0  # router rows after the routed experts' (`Family.router_extra_rows`)

    @property
    def num_experts(self) -> int:
        return self.router_weight.shape[0]

    @property
    def top_k(self) -> int:
        return int(getattr(self.router, "top_k", getattr(self.block, "top_k", 0)))

    @property
    def router_weight(self) -> torch.Tensor:
        """Router rows, one per expert: `[E, R]` (rows after the routed experts' left out).

        R is the width of what the router's last projection reads: the hidden size for a Linear router,
        the router MLP's width for an MLP router (Zaya's `router_mlp.out_proj`). The experts' own input
        width is `expert_input_size`.
        """
        rows = _tensor_at(self.router, self.family.router_weight)
        return rows[: rows.shape[0] - self.extra_rows] if self.extra_rows else rows

    @property
    def router_inputs(self) -> dict[str, torch.Tensor]:
        """Block-level per-expert tensors the block passes to its router (`Family.router_inputs`)."""
        return {name: getattr(self.block, name) for name in self.family.router_inputs}

    @property
    def router_bias(self) -> torch.Tensor | None:
        """The per-expert bias or score-correction bias (`[E]` or `[1, E]`) of the router, its submodules
        (Ernie's `moe_statics`) or its block (`Family.router_inputs`), if the family has one."""
        for module in self.router.modules():
            for name in _ROUTER_BIAS_NAMES:
                bias = getattr(module, name, None)
                if isinstance(bias, torch.Tensor) and bias.dim() <= 2 and bias.shape[-1] == self.num_experts:
                    return bias
        return next(iter(self.router_inputs.values()), None)

    @property
    def has_gate(self) -> bool:
        return bool(getattr(self.experts, "has_gate", hasattr(self.experts, "gate_up_proj")))

    @property
    def is_transposed(self) -> bool:
        return bool(getattr(self.experts, "is_transposed", False))

    @property
    def is_concatenated(self) -> bool:
        return bool(getattr(self.experts, "is_concatenated", True))

    @property
    def expert_input_size(self) -> int:
        """Width of the states the routed experts read (`gate_up_proj`/`up_proj`'s input): usually the hidden size."""
        return self.up_param.shape[1] if self.is_transposed else self.up_param.shape[2]

    @property
    def intermediate_size(self) -> int:
        return self.down_proj.shape[1] if self.is_transposed else self.down_proj.shape[2]

    @property
    def up_param(self) -> torch.Tensor:
        return self.experts.gate_up_proj if self.has_gate else self.experts.up_proj

    @property
    def down_proj(self) -> torch.Tensor:
        return self.experts.down_proj

    @property
    def shared_experts(self) -> dict[str, nn.Module]:
        """Always-on shared experts of the block, or of its decoder layer beside it (never expert-pruned)."""
        found = {}
        for name in self.family.shared_attrs:
            module = getattr(self.block, name, None)
            if not isinstance(module, nn.Module) and self.decoder_layer is not None:
                module = getattr(self.decoder_layer, name, None)
            if isinstance(module, nn.Module):
                found[name] = module
        return found

    def route(
        self, hidden: torch.Tensor, router: nn.Module | None = None, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the family's own gate: hidden `[T, H]` -> (logits `[T, E]`, weights `[T, k]`, index `[T, k]`).

        `router` (default: the block's) is called as the block calls it; with `keep` (sorted expert
        indices), the block-level `router_inputs` are sliced to those experts, for a router restricted to them.
        """
        flat = hidden.reshape(-1, hidden.shape[-1])
        inputs = list(self.router_inputs.values())
        if keep is not None:
            inputs = [tensor.index_select(-1, keep.to(tensor.device)) for tensor in inputs]
        router = self.router if router is None else router
        logits, weights, index = router(flat[None] if self.family.router_takes_batch else flat, *inputs)[:3]
        return logits.reshape(flat.shape[0], -1), weights.reshape(flat.shape[0], -1), index.reshape(flat.shape[0], -1)

    def expert_weights(self, expert: int) -> dict[str, torch.Tensor]:
        """Views `[out, in]` of one expert's matrices (`gate_proj`, `up_proj`, `down_proj`).

        They alias the stacked parameters, so in-place edits (pruning masks) change the model.
        """
        up = self.up_param[expert]
        down = self.down_proj[expert]
        if self.is_transposed:  # stored [in, out]
            up, down = up.transpose(0, 1), down.transpose(0, 1)
        if not self.has_gate:
            return {"up_proj": up, "down_proj": down}
        if self.is_concatenated:
            size = up.shape[0] // 2
            gate, up_half = up[:size], up[size:]
        else:  # interleaved rows: gate0, up0, gate1, up1, ...
            gate, up_half = up[0::2], up[1::2]
        return {"gate_proj": gate, "up_proj": up_half, "down_proj": down}

    def expert_biases(self, expert: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not getattr(self.experts, "has_bias", False):
            return None, None
        up_bias = self.experts.gate_up_proj_bias if self.has_gate else self.experts.up_proj_bias
        return up_bias[expert], self.experts.down_proj_bias[expert]

    def expert_intermediate(self, expert: int, hidden: torch.Tensor) -> torch.Tensor:
        """The activation that enters `down_proj` for `hidden [T, H]` (H: `expert_input_size`): `[T, I]`."""
        up = self.up_param[expert]
        weight = up.transpose(0, 1) if self.is_transposed else up
        up_bias, _ = self.expert_biases(expert)
        projected = F.linear(hidden, weight, up_bias)
        if self.has_gate:
            return self.experts._apply_gate(projected)
        return self.experts.act_fn(projected)

    def run_expert(self, expert: int, hidden: torch.Tensor) -> torch.Tensor:
        """One expert's output (no gate weight applied) for `hidden [T, H]`: `[T, H]` (H: `expert_input_size`).

        Experts built with a post-expert norm (Muse Spark's) apply it, as the experts module does.
        """
        down = self.down_proj[expert]
        weight = down.transpose(0, 1) if self.is_transposed else down
        _, down_bias = self.expert_biases(expert)
        output = F.linear(self.expert_intermediate(expert, hidden), weight, down_bias)
        return self.experts.post_expert_norm(output) if getattr(self.experts, "has_post_expert_norm", False) else output

    def expert_param_count(self) -> int:
        """Parameters of one routed expert (matrices and biases)."""
        per_expert = sum(p[0].numel() for p in self.experts.parameters(recurse=False) if p.dim() >= 1)
        return int(per_expert)


class MoEAdapter:
    """Finds the MoE layers of a transformers model and describes them."""

    def __init__(self, model: nn.Module):
        self.model = model
        model_type = getattr(model.config, "model_type", "?")
        # The language model's config: a vision-language wrapper keeps the MoE facts in its text_config.
        get_text_config = getattr(model.config, "get_text_config", None)
        self.config = get_text_config() if callable(get_text_config) else model.config
        self.layers = self._discover(model)
        if not self.layers:
            raise MoepruneError(
                f"no MoE layer found in this {model_type} model; moeprune prunes Mixture-of-Experts "
                f"models (covered families: {covered_families()})"
            )
        family = get_family(model_type)
        if family is None:
            reason = refusal(model_type) or f"no entry in arch/families.py (covered: {covered_families()})"
            raise not_covered_error(model_type, reason)
        self.family = family
        # Stacked shared experts (Inkling's) look like routed ones: keep the routed experts only.
        shared = {
            id(module)
            for layer in self.layers
            for name in family.shared_attrs
            if (module := getattr(layer.block, name, None)) is not None
        }
        self.layers = [layer for layer in self.layers if id(layer.experts) not in shared]
        for layer in self.layers:
            layer.family = family
            layer.extra_rows = int(family.router_extra_rows(self.config))
            layer.router = self._find_router(layer.block, family)
            hidden_size = getattr(self.config, "hidden_size", layer.expert_input_size)
            if layer.expert_input_size != hidden_size and not family.experts_read_projection:
                raise MoepruneError(
                    f"the routed experts of this {model_type} model read a projection of the hidden states "
                    "(a latent size, e.g. nemotron_h's moe_latent_size), which moeprune does not handle"
                )

    @staticmethod
    def _language_model_prefix(model: nn.Module) -> str:
        """`model.language_model.` where a vision-language wrapper has one (its vision tower may hold MoE
        blocks too, e.g. dots3_note's; only the language model's are pruned), else ``""``."""
        get_decoder = getattr(model, "get_decoder", None)
        try:
            decoder = get_decoder() if callable(get_decoder) else None
        except (AttributeError, NotImplementedError, TypeError):
            decoder = None
        if not isinstance(decoder, nn.Module) or decoder is model:
            return ""
        name = next((name for name, module in model.named_modules() if module is decoder), "")
        return f"{name}." if name else ""

    @classmethod
    def _discover(cls, model: nn.Module) -> list[MoELayer]:
        found = []
        prefix = cls._language_model_prefix(model)
        if prefix and not any(_is_stacked_experts(m) for n, m in model.named_modules() if n.startswith(prefix)):
            prefix = ""
        for name, module in model.named_modules():
            if not _is_stacked_experts(module) or "." not in name or not name.startswith(prefix):
                continue
            block_path = name.rsplit(".", 1)[0]
            numbers = re.findall(r"\.(\d+)\.", f".{block_path}.")
            if not numbers:
                continue
            block = model.get_submodule(block_path)
            parent = model.get_submodule(block_path.rsplit(".", 1)[0]) if "." in block_path else None
            # Gemma 4 keeps router and experts in the decoder layer itself (beside a dense MLP): the block is the layer.
            decoder_layer = block if isinstance(parent, nn.ModuleList) else parent
            found.append(
                MoELayer(int(numbers[-1]), block_path, block, None, module, None, decoder_layer)  # type: ignore[arg-type]
            )
        return sorted(found, key=lambda layer: layer.index)

    @staticmethod
    def _find_router(block: nn.Module, family: Family) -> nn.Module:
        router = getattr(block, family.router_attr, None)
        missing = [name for name in family.router_inputs if not isinstance(getattr(block, name, None), torch.Tensor)]
        if not isinstance(router, nn.Module) or _tensor_at(router, family.router_weight) is None or missing:
            raise MoepruneError(
                f"no router '{family.router_attr}' with '{family.router_weight}' (and block tensors "
                f"{list(family.router_inputs)}) found in MoE block {type(block).__name__}"
            )
        return router

    @cached_property
    def decoder_layers(self) -> nn.ModuleList:
        """The model's list of decoder (or encoder) blocks, which holds every MoE block."""
        path = f"{self.layers[0].path}."
        list_path = path[: path.rfind(f".{self.layers[0].index}.")]
        return self.model.get_submodule(list_path)

    @property
    def moe_indices(self) -> list[int]:
        return [layer.index for layer in self.layers]

    def layer(self, index: int) -> MoELayer:
        for layer in self.layers:
            if layer.index == index:
                return layer
        raise MoepruneError(f"layer {index} is not an MoE layer; MoE layers: {self.moe_indices}")

    @property
    def renormalises(self) -> bool:
        return self.family.renormalises(self.config)

    def routed_expert_params(self) -> int:
        """All routed expert parameters of the model."""
        return sum(layer.expert_param_count() * layer.num_experts for layer in self.layers)

    def active_params_per_token(self) -> int:
        """Decoder-block parameters one token uses: everything but the routed experts it is not sent to."""
        blocks = sum(p.numel() for p in self.decoder_layers.parameters())
        unused = sum(layer.expert_param_count() * (layer.num_experts - layer.top_k) for layer in self.layers)
        return int(blocks - unused)


def get_adapter(model: nn.Module) -> MoEAdapter:
    """The adapter for `model`; raises MoepruneError for a non-MoE or uncovered model."""
    return MoEAdapter(model)
