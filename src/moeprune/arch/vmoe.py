"""V-MoE: a Vision Transformer whose MLP is a Mixture-of-Experts layer in every other block.

After Riquelme et al., 2021, "Scaling Vision with Sparse Mixture of Experts" (https://arxiv.org/abs/2106.05974),
written with transformers 5 conventions so that moeprune's generic MoE adapter covers it:

    VMoEForImageClassification
      .vmoe (VMoEModel)
        .embeddings            patch Conv2d + [CLS] token + learned positions
        .layers[i] (VMoELayer) .norm1 -> .attention (q/k/v/o_proj) -> .norm2 -> .mlp
             .mlp = VMoEMLP (fc1, fc2)                                   in dense blocks
             .mlp = VMoESparseMoeBlock(.gate VMoETopKRouter, .experts VMoEExperts)   in MoE blocks
        .norm
      .classifier (Linear on the [CLS] token)

The experts are stacked tensors `gate_up_proj [E, 2I, H]` and `down_proj [E, H, I]` behind transformers'
`@use_experts_implementation`, exactly as MixtralExperts, so every experts backend (eager, grouped_mm, ...)
and every hook moeprune uses on Mixtral works here too. Importing this module registers the model with
`AutoConfig` and `AutoModelForImageClassification`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, PreTrainedConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.integrations.moe import use_experts_implementation
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput, MoEModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

MODEL_TYPE = "vmoe"


@strict
class VMoEConfig(PreTrainedConfig):
    """Configuration of a V-MoE image classifier.

    Attributes:
        image_size: Side of the (square) input image in pixels.
        patch_size: Side of one square patch; `image_size` must be a multiple of it.
        num_channels: Input channels (1 for grayscale, 3 for RGB).
        hidden_size: Width of the residual stream.
        num_hidden_layers: Number of transformer blocks.
        num_attention_heads: Attention heads per block (must divide `hidden_size`).
        intermediate_size: Hidden width of the dense MLP and of each expert.
        num_local_experts: Routed experts per MoE block (alias `num_experts`).
        num_experts_per_tok: Experts each token is sent to (top-k).
        moe_layer_period: Every `moe_layer_period`-th block is MoE (2: blocks 1, 3, 5, ...).
        norm_topk_prob: Renormalise the top-k gate weights to sum to 1.
        hidden_act: Activation of the MLPs ("gelu" or "silu").
        layer_norm_eps: LayerNorm epsilon.
        initializer_range: Std of the normal weight initialisation.
        qkv_bias: Bias on the query/key/value projections.
        attention_dropout: Dropout on the attention probabilities while training.
        router_aux_loss_coef: Weight of the load-balancing loss added to the training loss.
        output_router_logits: Return router logits (and the aux loss) by default.
    """

    model_type = MODEL_TYPE
    attribute_map = {"num_experts": "num_local_experts"}

    image_size: int = 32
    patch_size: int = 4
    num_channels: int = 1
    hidden_size: int = 64
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    intermediate_size: int = 128
    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    moe_layer_period: int = 2
    norm_topk_prob: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    qkv_bias: bool = True
    attention_dropout: float | int = 0.0
    router_aux_loss_coef: float = 0.01
    output_router_logits: bool = False

    def __post_init__(self, **kwargs):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 1 <= self.num_experts_per_tok <= self.num_local_experts:
            raise ValueError("num_experts_per_tok must be between 1 and num_local_experts")
        if self.moe_layer_period < 1:
            raise ValueError("moe_layer_period must be >= 1")
        super().__post_init__(**kwargs)


def is_moe_layer(config: VMoEConfig, layer_idx: int) -> bool:
    """Whether block `layer_idx` holds an MoE layer (blocks period-1, 2*period-1, ...)."""
    return (layer_idx + 1) % config.moe_layer_period == 0


@dataclass
class VMoEImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` plus the router logits of every MoE block and the load-balancing loss."""

    router_logits: tuple[torch.Tensor, ...] | None = None
    aux_loss: torch.Tensor | None = None


class VMoEEmbeddings(nn.Module):
    """Non-overlapping patches projected by a Conv2d, a learned [CLS] token and learned positions."""

    def __init__(self, config: VMoEConfig):
        super().__init__()
        self.image_size = config.image_size
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embeddings = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.num_patches + 1, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Map `pixel_values [B, C, S, S]` to tokens `[B, 1 + P, H]`."""
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} images, got {tuple(pixel_values.shape[-2:])}"
            )
        patches = self.patch_embeddings(pixel_values).flatten(2).transpose(1, 2)  # [B, P, H]
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embeddings


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention on `[B, heads, T, d]` tensors; returns `([B, T, heads, d], weights)`."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class VMoEAttention(nn.Module):
    """Bidirectional multi-head self-attention dispatched through transformers' attention interface."""

    def __init__(self, config: VMoEConfig):
        super().__init__()
        self.config = config
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, hidden, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, hidden, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, hidden, bias=config.qkv_bias)
        self.o_proj = nn.Linear(hidden, hidden)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend over all tokens of `hidden_states [B, T, H]`."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # [B, heads, T, d]
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        dropout = self.config.attention_dropout if self.training else 0.0
        attn_output, attn_weights = attention_interface(
            self, query, key, value, None, dropout=dropout, scaling=self.scaling, **kwargs
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class VMoEMLP(nn.Module):
    """The dense MLP of the non-MoE blocks: fc1 -> activation -> fc2."""

    def __init__(self, config: VMoEConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Apply the MLP token-wise."""
        return self.fc2(self.act_fn(self.fc1(hidden_states)))


@use_experts_implementation
class VMoEExperts(nn.Module):
    """The routed experts of one MoE block, stored as stacked 3-D tensors (Mixtral layout)."""

    def __init__(self, config: VMoEConfig):
        super().__init__()
        self.num_experts = config.num_local_experts
        self.hidden_dim = config.hidden_size
        self.intermediate_dim = config.intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(self.num_experts, 2 * self.intermediate_dim, self.hidden_dim))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, self.hidden_dim, self.intermediate_dim))
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """Eager reference: `hidden_states [T, H]`, `top_k_index [T, k]`, `top_k_weights [T, k]` -> `[T, H]`."""
        final_hidden_states = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = F.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)  # [E+1, k, T]
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            expert_idx = expert_idx[0]
            if expert_idx == self.num_experts:
                continue
            top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
            current_state = hidden_states[token_idx]
            gate, up = F.linear(current_state, self.gate_up_proj[expert_idx]).chunk(2, dim=-1)
            current_hidden_states = F.linear(self.act_fn(gate) * up, self.down_proj[expert_idx])
            current_hidden_states = current_hidden_states * top_k_weights[token_idx, top_k_pos, None]
            final_hidden_states.index_add_(0, token_idx, current_hidden_states.to(final_hidden_states.dtype))
        return final_hidden_states


class VMoETopKRouter(nn.Module):
    """Softmax router, then top-k, then (optionally) renormalisation over the chosen k, as MixtralTopKRouter."""

    def __init__(self, config: VMoEConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_local_experts
        self.norm_topk_prob = config.norm_topk_prob
        self.hidden_dim = config.hidden_size
        self.weight = nn.Parameter(torch.empty(self.num_experts, self.hidden_dim))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return `router_logits [T, E]`, `top_k_weights [T, k]` and `top_k_index [T, k]`."""
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits = F.linear(hidden_states, self.weight)  # [T, E]
        router_probs = F.softmax(router_logits.float(), dim=-1)
        top_k_weights, top_k_index = torch.topk(router_probs, self.top_k, dim=-1)  # [T, k]
        if self.norm_topk_prob:
            top_k_weights = top_k_weights / top_k_weights.sum(dim=-1, keepdim=True)
        return router_logits, top_k_weights, top_k_index


class VMoESparseMoeBlock(nn.Module):
    """Routes every token to its top-k experts and mixes their outputs with the gate weights."""

    def __init__(self, config: VMoEConfig):
        super().__init__()
        self.gate = VMoETopKRouter(config)
        self.experts = VMoEExperts(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`hidden_states [B, T, H]` -> `[B, T, H]`."""
        batch_size, seq_len, hidden_dim = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden_dim)  # [B*T, H]
        _, top_k_weights, top_k_index = self.gate(flat)
        out = self.experts(flat, top_k_index, top_k_weights.to(flat.dtype))
        return out.reshape(batch_size, seq_len, hidden_dim)


class VMoELayer(GradientCheckpointingLayer):
    """A pre-norm transformer block: x + attention(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: VMoEConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = VMoEAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VMoESparseMoeBlock(config) if is_moe_layer(config, layer_idx) else VMoEMLP(config)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        """`hidden_states [B, T, H]` -> `[B, T, H]`."""
        attn_output, _ = self.attention(self.norm1(hidden_states), **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.norm2(hidden_states))


class VMoEPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the transformers plumbing shared by the V-MoE models."""

    config_class = VMoEConfig
    config: VMoEConfig
    base_model_prefix = "vmoe"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["VMoEEmbeddings", "VMoELayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    _can_record_outputs = {
        "router_logits": OutputRecorder(VMoETopKRouter, index=0),
        "hidden_states": VMoELayer,
        "attentions": OutputRecorder(VMoEAttention, index=1),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, VMoEExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=std)
        elif isinstance(module, VMoETopKRouter):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, VMoEEmbeddings):
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)


class VMoEModel(VMoEPreTrainedModel):
    """The V-MoE encoder: embeddings, blocks, final LayerNorm; returns every token's hidden state."""

    def __init__(self, config: VMoEConfig):
        super().__init__(config)
        self.embeddings = VMoEEmbeddings(config)
        self.layers = nn.ModuleList([VMoELayer(config, idx) for idx in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> MoEModelOutput:
        """Encode `pixel_values [B, C, S, S]` into `last_hidden_state [B, 1 + P, H]`.

        Pass `output_router_logits=True` (or `output_hidden_states`, `output_attentions`) to collect them.
        """
        expected_dtype = self.embeddings.patch_embeddings.weight.dtype
        hidden_states = self.embeddings(pixel_values.to(expected_dtype))
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        return MoEModelOutput(last_hidden_state=self.norm(hidden_states))


class VMoEForImageClassification(VMoEPreTrainedModel):
    """V-MoE with a linear classifier on the final [CLS] token."""

    def __init__(self, config: VMoEConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vmoe = VMoEModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> VMoEImageClassifierOutput:
        """Classify `pixel_values [B, C, S, S]` into `logits [B, num_labels]`.

        With `labels`, `loss` is the classification loss plus `router_aux_loss_coef` times the load-balancing
        loss when router logits are collected (`output_router_logits=True` or the config default).
        """
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        outputs = self.vmoe(pixel_values, output_router_logits=output_router_logits, **kwargs)
        logits = self.classifier(outputs.last_hidden_state[:, 0])
        aux_loss = None
        if output_router_logits and outputs.router_logits:
            aux_loss = load_balancing_loss_func(
                tuple(outputs.router_logits), self.config.num_local_experts, self.config.num_experts_per_tok
            )
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
            if aux_loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss
        return VMoEImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
            aux_loss=aux_loss,
        )


def register_vmoe() -> None:
    """Register V-MoE with AutoConfig, AutoModel and AutoModelForImageClassification (safe to call twice)."""
    AutoConfig.register(MODEL_TYPE, VMoEConfig, exist_ok=True)
    AutoModel.register(VMoEConfig, VMoEModel, exist_ok=True)
    AutoModelForImageClassification.register(VMoEConfig, VMoEForImageClassification, exist_ok=True)


register_vmoe()
