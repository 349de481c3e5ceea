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


def deepseek(num_experts: int) -> dict:
    """What DeepSeek-V2 and V3 share: MLA attention sizes, one shared expert, two routing groups."""
    return dict(
        intermediate_size=64,
        moe_intermediate_size=24,
        n_routed_experts=num_experts,
        n_shared_experts=1,
        n_group=2,
        kv_lora_rank=16,
        q_lora_rank=None,
        qk_rope_head_dim=4,
        qk_nope_head_dim=4,
        v_head_dim=8,
        num_key_value_heads=4,
    )


def v3_like(num_experts: int) -> dict:
    """DeepSeek-V3-like MoE sizes: a dense first layer, two sparse ones, two routing groups, one shared expert."""
    return dict(
        intermediate_size=64,
        moe_intermediate_size=24,
        n_routed_experts=num_experts,
        n_shared_experts=1,
        n_group=2,
        topk_group=2,
        norm_topk_prob=True,
        num_hidden_layers=3,
        mlp_layer_types=["dense", "sparse", "sparse"],
    )


def mla() -> dict:
    """Multi-head latent attention sizes."""
    return dict(
        kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, num_key_value_heads=4
    )


def indexer() -> dict:
    """Sparse-attention indexer sizes (it keeps every token of a short sequence)."""
    return dict(index_topk=64, index_head_dim=8, index_n_heads=2)


def gated_delta_net(num_experts: int) -> dict:
    """Qwen3-Next-style hybrid sizes: a gated-delta-net (linear attention) layer, then a full attention one."""
    return dict(
        intermediate_size=64,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        num_experts=num_experts,
        norm_topk_prob=True,
        head_dim=8,
        layer_types=["linear_attention", "full_attention"],
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    )


def mamba2() -> dict:
    """Small Mamba-2 mixer sizes."""
    return dict(
        mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=16, mamba_expand=2
    )
