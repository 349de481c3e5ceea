"""Config fragments the tiny models of several families share (sizes only; no torch)."""

from __future__ import annotations

COMMON = dict(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
WIDTHS = dict(intermediate_size=64, moe_intermediate_size=24)  # a dense layer's MLP width, one routed expert's
TWO_GROUPS = dict(n_group=2, topk_group=2)  # experts routed in two groups, both kept


def rope() -> dict:
    """The default RoPE, for configs that want it spelled out (a fresh dict: configs may edit theirs)."""
    return {"rope_type": "default", "rope_theta": 10000.0}


def interleaved(kind: str, layers: int) -> list[str]:
    """The layer types of `layers` layers: `kind` on the even ones, full attention on the odd ones."""
    return [kind if index % 2 == 0 else "full_attention" for index in range(layers)]


def sliding(layers: int = 0) -> dict:
    """8-wide heads with a 16-token sliding window; with `layers`, that many layer types alternating sliding
    and full attention."""
    values = dict(head_dim=8, sliding_window=16)
    if layers:
        values["layer_types"] = interleaved("sliding_attention", layers)
    return values


def dense_first(layers: int = 3) -> dict:
    """`layers` decoder layers, the first with a dense MLP, the others sparse."""
    return dict(num_hidden_layers=layers, mlp_layer_types=["dense"] + ["sparse"] * (layers - 1))


def _deepseek_moe(num_experts: int) -> dict:
    """The DeepSeek MoE sizes: routed experts, one shared expert, two routing groups."""
    return dict(WIDTHS, n_routed_experts=num_experts, n_shared_experts=1, n_group=2)


def deepseek(num_experts: int) -> dict:
    """What DeepSeek-V2 and V3 share: MLA attention sizes, one shared expert, two routing groups."""
    return dict(_deepseek_moe(num_experts), **mla(q_rank=None))


def v3_like(num_experts: int) -> dict:
    """DeepSeek-V3-like MoE sizes: a dense first layer, two sparse ones, two routing groups, one shared expert."""
    return dict(_deepseek_moe(num_experts), topk_group=2, norm_topk_prob=True, **dense_first())


def mla(q_rank: int | None = 16) -> dict:
    """Multi-head latent attention sizes (`q_rank`: the query compression rank; None, queries not compressed)."""
    return dict(
        kv_lora_rank=16, q_lora_rank=q_rank, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, num_key_value_heads=4
    )


def indexer() -> dict:
    """Sparse-attention indexer sizes (it keeps every token of a short sequence)."""
    return dict(index_topk=64, index_head_dim=8, index_n_heads=2)


def gated_delta_net(num_experts: int) -> dict:
    """Qwen3-Next-style hybrid sizes: a gated-delta-net (linear attention) layer, then a full attention one."""
    return dict(
        WIDTHS,
        shared_expert_intermediate_size=40,
        num_experts=num_experts,
        norm_topk_prob=True,
        head_dim=8,
        layer_types=interleaved("linear_attention", 2),
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    )


def gpt_oss(num_experts: int) -> dict:
    """GPT-OSS sizes (OpenAI's privacy filter is a token classifier of the same layout)."""
    return dict(intermediate_size=24, num_local_experts=num_experts, **sliding(), rope_parameters=rope())


def mamba2() -> dict:
    """Small Mamba-2 mixer sizes."""
    return dict(
        mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=16, mamba_expand=2
    )
