"""Tiny random MoE models of every covered family, for tests and benchmarks (CPU, seconds)."""

from __future__ import annotations

import torch
from torch import nn

from moeprune.arch.families import get_family

_COMMON = dict(
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


def _deepseek(num_experts: int) -> dict:
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


def _v3_like(num_experts: int) -> dict:
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


def _mla() -> dict:
    """Multi-head latent attention sizes."""
    return dict(
        kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, num_key_value_heads=4
    )


def _indexer() -> dict:
    """Sparse-attention indexer sizes (it keeps every token of a short sequence)."""
    return dict(index_topk=64, index_head_dim=8, index_n_heads=2)


def _gated_delta_net(num_experts: int) -> dict:
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


def _mamba2() -> dict:
    """Small Mamba-2 mixer sizes."""
    return dict(
        mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=16, mamba_expand=2
    )


def _family_kwargs(family: str, num_experts: int, top_k: int) -> tuple[str, dict]:
    moe = dict(num_experts_per_tok=top_k)
    specs = {
        "mixtral": ("MixtralConfig", dict(intermediate_size=48, num_local_experts=num_experts)),
        "qwen2_moe": (
            "Qwen2MoeConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                shared_expert_intermediate_size=40,
                num_experts=num_experts,
                norm_topk_prob=True,
            ),
        ),
        "qwen3_moe": (
            "Qwen3MoeConfig",
            dict(
                intermediate_size=64, moe_intermediate_size=24, num_experts=num_experts, norm_topk_prob=True, head_dim=8
            ),
        ),
        "olmoe": ("OlmoeConfig", dict(intermediate_size=24, num_experts=num_experts, norm_topk_prob=True)),
        "deepseek_v2": (
            "DeepseekV2Config",
            dict(**_deepseek(num_experts), first_k_dense_replace=0, topk_group=1, topk_method="group_limited_greedy"),
        ),
        "deepseek_v3": (
            "DeepseekV3Config",
            dict(
                **_deepseek(num_experts),
                first_k_dense_replace=1,
                num_hidden_layers=3,
                topk_group=2,
                norm_topk_prob=True,
            ),
        ),
        "phimoe": ("PhimoeConfig", dict(intermediate_size=48, num_local_experts=num_experts)),
        "flex_olmo": ("FlexOlmoConfig", dict(intermediate_size=24, num_experts=num_experts, norm_topk_prob=True)),
        "granitemoe": ("GraniteMoeConfig", dict(intermediate_size=24, num_local_experts=num_experts)),
        "granitemoeshared": (
            "GraniteMoeSharedConfig",
            dict(intermediate_size=24, num_local_experts=num_experts, shared_intermediate_size=40),
        ),
        "mellum": (
            "MellumConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                num_local_experts=num_experts,
                norm_topk_prob=True,
                head_dim=8,
                sliding_window=16,
            ),
        ),
        "minimax_m2": ("MiniMaxM2Config", dict(intermediate_size=24, num_local_experts=num_experts, head_dim=8)),
        "laguna": (
            "LagunaConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                shared_expert_intermediate_size=40,
                num_experts=num_experts,
                head_dim=8,
                sliding_window=16,
                num_attention_heads_per_layer=[4, 4],
                mlp_layer_types=["dense", "sparse"],
            ),
        ),
        "ernie4_5_moe": (
            "Ernie4_5_MoeConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                moe_num_experts=num_experts,
                moe_k=top_k,
                moe_num_shared_experts=1,
                num_hidden_layers=3,
                moe_layer_start_index=1,
                moe_layer_end_index=2,
            ),
        ),
        "hunyuan_v1_moe": (
            "HunYuanMoEV1Config",
            dict(intermediate_size=24, num_experts=num_experts, moe_topk=top_k, head_dim=8),
        ),
        "hy_v3": (
            "HYV3Config",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                num_experts=num_experts,
                num_shared_experts=1,
                head_dim=8,
                mlp_layer_types=["dense", "sparse"],
            ),
        ),
        "glm4_moe": (
            "Glm4MoeConfig",
            dict(_v3_like(num_experts), first_k_dense_replace=1, head_dim=8, use_qk_norm=True),
        ),
        "glm4_moe_lite": ("Glm4MoeLiteConfig", dict(_v3_like(num_experts), **_mla())),
        "dots1": ("Dots1Config", dict(_v3_like(num_experts), first_k_dense_replace=1, head_dim=8)),
        "solar_open": ("SolarOpenConfig", dict(_v3_like(num_experts), head_dim=8)),
        "axk1": ("AXK1Config", dict(_v3_like(num_experts), **_mla())),
        "axk2": ("AXK2Config", dict(_v3_like(num_experts), **_mla(), **_indexer())),
        "deepseek_v32": (
            "DeepseekV32Config",
            dict(_v3_like(num_experts), **_mla(), **_indexer(), first_k_dense_replace=1),
        ),
        "glm_moe_dsa": (
            "GlmMoeDsaConfig",
            dict(_v3_like(num_experts), **_mla(), **_indexer(), first_k_dense_replace=1),
        ),
        "aria_text": (
            "AriaTextConfig",
            dict(
                intermediate_size=24, moe_num_experts=num_experts, moe_topk=top_k, moe_num_shared_experts=1, head_dim=8
            ),
        ),
        "flint": (
            "FlintConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                shared_expert_intermediate_size=40,
                num_experts=num_experts,
                head_dim=8,
                sliding_window=16,
                num_hidden_layers=3,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                mlp_only_layers=[0],
            ),
        ),
        "granitemoe_swa": (
            "GraniteMoeSWAConfig",
            dict(intermediate_size=24, num_local_experts=num_experts, shared_intermediate_size=40, sliding_window=16),
        ),
        "exaone_moe": (
            "ExaoneMoeConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                num_experts=num_experts,
                num_shared_experts=1,
                n_group=2,
                topk_group=2,
                head_dim=8,
                sliding_window=16,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                num_hidden_layers=3,
                mlp_layer_types=["dense", "sparse", "sparse"],
            ),
        ),
        "afmoe": (
            "AfmoeConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                num_experts=num_experts,
                num_shared_experts=1,
                num_dense_layers=1,
                num_hidden_layers=3,
                head_dim=8,
                sliding_window=16,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            ),
        ),
        "cohere2_moe": (
            "Cohere2MoeConfig",
            dict(
                intermediate_size=24,
                num_experts=num_experts,
                num_shared_experts=1,
                head_dim=8,
                sliding_window=16,
                layer_types=["sliding_attention", "full_attention"],
            ),
        ),
        "mimo_v2_flash": (
            "MiMoV2FlashConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                n_routed_experts=num_experts,
                n_group=2,
                topk_group=2,
                head_dim=8,
                v_head_dim=8,
                sliding_window=16,
                num_hidden_layers=3,
                mlp_layer_types=["dense", "sparse", "sparse"],
            ),
        ),
        "beam": (
            "BeamConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                num_experts=num_experts,
                n_group=2,
                topk_group=2,
                head_dim=8,
                sliding_window=16,
                num_hidden_layers=3,
                mlp_layer_types=["dense", "sparse", "sparse"],
            ),
        ),
        "kolibri1": (
            "Kolibri1Config",
            dict(
                moe_intermediate_size=24,
                shared_expert_intermediate_size=40,
                num_local_experts=num_experts,
                head_dim=8,
                sliding_window=16,
                layer_types=["sliding_attention", "full_attention"],
            ),
        ),
        "gpt_oss": (
            "GptOssConfig",
            dict(
                intermediate_size=24,
                num_local_experts=num_experts,
                head_dim=8,
                sliding_window=16,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
        ),
        "qwen3_next": ("Qwen3NextConfig", dict(_gated_delta_net(num_experts), decoder_sparse_step=1)),
        "qwen3_5_moe_text": ("Qwen3_5MoeTextConfig", _gated_delta_net(num_experts)),
        "granitemoehybrid": (
            "GraniteMoeHybridConfig",
            dict(
                intermediate_size=24,
                num_local_experts=num_experts,
                shared_intermediate_size=40,
                layer_types=["mamba", "attention"],
                **_mamba2(),
            ),
        ),
        "jamba": (
            "JambaConfig",
            dict(
                intermediate_size=24,
                num_experts=num_experts,
                num_hidden_layers=4,
                expert_layer_period=2,
                expert_layer_offset=1,
                attn_layer_period=2,
                attn_layer_offset=0,
                mamba_d_state=8,
                mamba_dt_rank=4,
            ),
        ),
        "minimax": (
            "MiniMaxConfig",
            dict(
                intermediate_size=24,
                num_local_experts=num_experts,
                head_dim=8,
                block_size=8,
                layer_types=["linear_attention", "full_attention"],
            ),
        ),
        "kimi_linear": (
            "KimiLinearConfig",
            dict(
                _v3_like(num_experts),
                num_experts=num_experts,
                kv_lora_rank=16,
                q_lora_rank=None,
                qk_rope_head_dim=4,
                qk_nope_head_dim=4,
                v_head_dim=8,
                num_key_value_heads=4,
                layer_types=["linear_attention", "full_attention", "linear_attention"],
                linear_head_dim=8,
                linear_num_heads=4,
            ),
        ),
        "bailing_hybrid": (
            "BailingHybridConfig",
            dict(
                _v3_like(num_experts),
                num_experts=num_experts,
                **_mla(),
                head_dim=8,
                first_k_dense_replace=1,
                num_nextn_predict_layers=0,
                layer_types=["linear_attention", "full_attention", "linear_attention"],
            ),
        ),
        "nemotron_h": (
            "NemotronHConfig",
            dict(
                intermediate_size=64,
                n_routed_experts=num_experts,
                moe_intermediate_size=24,
                moe_shared_expert_intermediate_size=40,
                n_group=1,
                topk_group=1,
                head_dim=8,
                layers_block_type=["mamba", "moe", "attention", "moe"],
                mamba_num_heads=4,
                mamba_head_dim=16,
                n_groups=1,
                ssm_state_size=8,
                chunk_size=16,
            ),
        ),
        "lfm2_moe": (
            "Lfm2MoeConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                num_experts=num_experts,
                num_dense_layers=1,
                num_hidden_layers=3,
                layer_types=["conv", "full_attention", "conv"],
                use_expert_bias=True,
                norm_topk_prob=True,
            ),
        ),
        "minimax_m3_vl_text": (
            "MiniMaxM3VLTextConfig",
            dict(
                intermediate_size=24,
                dense_intermediate_size=64,
                shared_intermediate_size=40,
                num_local_experts=num_experts,
                head_dim=8,
                rotary_dim=4,
                num_hidden_layers=3,
                mlp_layer_types=["dense", "sparse", "sparse"],
                layer_types=["full_attention", "minimax_m3_sparse", "full_attention"],
                index_n_heads=2,
                index_head_dim=8,
                index_block_size=4,
                index_topk_blocks=2,
            ),
        ),
        "dots3_note_text": (
            "Dots3NoteTextConfig",
            dict(
                _v3_like(num_experts),
                **_mla(),
                **_indexer(),
                head_dim=8,
                shared_experts_intermediate_size=40,
                sliding_window=16,
                layer_types=["indexed_attention", "sliding_attention", "indexed_attention"],
            ),
        ),
        "mistral4": (
            "Mistral4Config",
            dict(_v3_like(num_experts), **_mla(), first_k_dense_replace=1),
        ),
        "glm5_next_text": (  # only as glm5_next's language model
            "Glm5NextTextConfig",
            dict(
                _v3_like(num_experts),
                n_group=1,
                topk_group=1,
                num_key_value_heads=4,
                kv_lora_rank=16,
                q_lora_rank=16,
                qk_rope_head_dim=0,
                qk_nope_head_dim=8,
                v_head_dim=8,
                head_dim=0,
                **_indexer(),
                layer_types=["indexed_attention", "linear_attention", "indexed_attention"],
                indexer_types=["full", "full", "full"],
                index_kpool=4,
                linear_head_dim=8,
                linear_num_heads=4,
            ),
        ),
        "openai_privacy_filter": (
            "OpenAIPrivacyFilterConfig",
            dict(
                intermediate_size=24,
                num_local_experts=num_experts,
                head_dim=8,
                sliding_window=16,
                num_labels=5,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
        ),
        "gemma4_text": (
            "Gemma4TextConfig",
            dict(
                intermediate_size=48,
                head_dim=8,
                sliding_window=16,
                layer_types=["sliding_attention", "full_attention"],
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                },
                hidden_size_per_layer_input=8,
                vocab_size_per_layer_input=128,
                enable_moe_block=True,
                num_experts=num_experts,
                top_k_experts=top_k,
                moe_intermediate_size=24,
            ),
        ),
        "qwen4_exp_text": (
            "Qwen4ExpTextConfig",
            dict(
                _gated_delta_net(num_experts),
                layer_types=["linear_attention", "indexed_attention"],
                hc_count=2,
                hc_lowrank=8,
                ple_embed_dim=16,
                heads_per_ngram=2,
                ngram_vocab_size_base=64,
                split_ngram_parts=4,
                indexer_n_heads=2,
                indexer_kv_heads=1,
                indexer_head_dim=8,
                indexer_budget=64,
                indexer_compress_ratio=2,
            ),
        ),
        "hy_v4": (
            "HYV4Config",
            dict(
                _v3_like(num_experts),
                n_group=1,
                topk_group=1,
                **_mla(),
                head_dim=8,
                **dict(_indexer(), index_topk=8),
                num_hidden_layers=4,
                mlp_layer_types=["dense", "sparse", "sparse", "sparse"],
                layer_types=["indexed_attention"] * 4,
                indexer_types=["full", "shared", "full", "shared"],
                hc_mult=2,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
        ),
        "inkling_text": (
            "InklingTextConfig",
            dict(
                intermediate_size=64,
                moe_intermediate_size=24,
                n_routed_experts=num_experts,
                n_shared_experts=1,
                head_dim=8,
                swa_num_attention_heads=4,
                swa_num_key_value_heads=2,
                swa_head_dim=8,
                sliding_window_size=16,
                d_rel=4,
                rel_extent=16,
                num_hidden_layers=3,
                layer_types=["hybrid_sliding", "hybrid", "hybrid_sliding"],
                mlp_layer_types=["dense", "sparse", "sparse"],
                logits_mup_width_multiplier=1.0,
            ),
        ),
        # Only as the language model of muse_spark (its vision-language wrapper).
        "muse_spark_text": (
            "MuseSparkTextConfig",
            dict(
                intermediate_size=48,
                moe_intermediate_size=24,
                moe_hidden_size=16,
                num_local_experts=num_experts,
                head_dim=8,
                sliding_window=16,
                num_hidden_layers=3,
                mlp_layer_types=["dense", "sparse", "sparse"],
            ),
        ),
        "zaya": (
            "ZayaConfig",
            dict(
                moe_intermediate_size=24,
                num_experts=num_experts,
                num_experts_per_tok=1,  # ZAYA supports top-1 only
                head_dim=8,
                router_hidden_size=12,
                sliding_window=16,
                num_hidden_layers=3,
                layer_types=["hybrid", "hybrid_sliding", "hybrid"],
            ),
        ),
    }
    if family not in specs:
        raise ValueError(f"no tiny config for family {family!r}; known: {sorted(specs)}")
    name, extra = specs[family]
    return name, {**_COMMON, **moe, **extra}


_SMALL_VIT = dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2, patch_size=4, image_size=16)
_SMALL_SAM = dict(
    hidden_size=16,
    output_channels=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=4,
    mlp_dim=24,
    window_size=2,
    global_attn_indexes=[0],
)
_SMALL_LM = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
)
_SMALL_GEMMA4_VISION = dict(
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=8,
    patch_size=4,
    position_embedding_size=64,
)
_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
# Vision-language wrappers: (config class, text family whose tiny config the language model reuses,
# text config changes, wrapper kwargs: a tiny vision tower).
_VISION_LANGUAGE: dict[str, tuple[str, str, dict, dict]] = {
    "qwen3_vl_moe": (
        "Qwen3VLMoeConfig",
        "qwen3_moe",
        dict(rope_parameters=dict(_MROPE)),
        dict(
            vision_config=dict(
                depth=1,
                hidden_size=16,
                intermediate_size=24,
                num_heads=2,
                out_hidden_size=32,
                patch_size=4,
                spatial_merge_size=2,
                temporal_patch_size=2,
                num_position_embeddings=16,
                deepstack_visual_indexes=[0],
            ),
        ),
    ),
    "glm4v_moe": (
        "Glm4vMoeConfig",
        "glm4_moe",
        dict(rope_parameters={**_MROPE, "partial_rotary_factor": 1.0}),
        dict(vision_config=dict(_SMALL_VIT, out_hidden_size=32, spatial_merge_size=2, temporal_patch_size=2)),
    ),
    "qwen3_5_moe": (
        "Qwen3_5MoeConfig",
        "qwen3_5_moe_text",
        dict(rope_parameters={**_MROPE, "partial_rotary_factor": 0.5}),
        dict(
            vision_config=dict(
                _SMALL_VIT, out_hidden_size=32, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16
            )
        ),
    ),
    "aria": (
        "AriaConfig",
        "aria_text",
        {},
        dict(
            vision_config=dict(
                hidden_size=16,
                intermediate_size=24,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=16,
                patch_size=4,
            ),
            projector_patch_to_query_dict={16: 4},
        ),
    ),
    "mistral_large4": (
        "MistralLarge4Config",
        "glm_moe_dsa",
        dict(rope_parameters=dict(_ROPE)),
        dict(
            vision_config=dict(
                hidden_size=16,
                intermediate_size=24,
                num_hidden_layers=1,
                num_attention_heads=2,
                head_dim=8,
                image_size=16,
                patch_size=4,
            )
        ),
    ),
    "minimax_m3_vl": (
        "MiniMaxM3VLConfig",
        "minimax_m3_vl_text",
        {},
        dict(
            vision_config=dict(
                hidden_size=16,
                intermediate_size=24,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=16,
                patch_size=4,
            ),
            projector_hidden_size=32,
            merged_hidden_size=64,
        ),
    ),
    "deepseek_ocr2": (
        "DeepseekOcr2Config",
        "deepseek_v2",
        dict(mlp_layer_types=["sparse", "sparse"]),
        dict(vision_config=dict(sam_config=_SMALL_SAM, encoder_config=_SMALL_LM)),
    ),
    "unlimited_ocr": (
        "UnlimitedOcrConfig",
        "deepseek_v2",
        {},
        dict(
            vision_config=dict(
                sam_config=_SMALL_SAM,
                encoder_config=dict(
                    hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=16
                ),
            )
        ),
    ),
    "dots3_note": (
        "Dots3NoteConfig",
        "dots3_note_text",
        {},
        dict(
            vision_config=dict(  # an MoE vision tower: left as it is
                hidden_size=16,
                intermediate_size=24,
                num_hidden_layers=2,
                num_attention_heads=2,
                patch_size=4,
                moe_intermediate_size=12,
                mlp_layer_types=["dense", "sparse"],
                num_local_experts=4,
                num_experts_per_tok=2,
                adapter_in_dim=16,
                adapter_out_dim=32,
            ),
            audio_config=dict(
                hidden_size=16,
                intermediate_size=24,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=8,
                feature_size=16,
                downsample_hidden_size=8,
                conv_output_size=16,
                adapter_input_size=16,
                adapter_out_dim=32,
            ),
        ),
    ),
    "qwen3_omni_moe_thinker": (
        "Qwen3OmniMoeThinkerConfig",
        "qwen3_moe",
        dict(rope_parameters=dict(_MROPE, mrope_interleaved=True)),
        dict(
            vision_config=dict(
                _SMALL_VIT,
                out_hidden_size=32,
                spatial_merge_size=2,
                temporal_patch_size=2,
                num_position_embeddings=16,
                deepstack_visual_indexes=[0],
            ),
            audio_config=dict(
                num_mel_bins=16,
                encoder_layers=1,
                encoder_attention_heads=2,
                encoder_ffn_dim=24,
                d_model=16,
                output_dim=32,
                downsample_hidden_size=8,
            ),
        ),
    ),
    "glm5_next": (
        "Glm5NextConfig",
        "glm5_next_text",
        {},
        dict(
            vision_config=dict(
                _SMALL_VIT,
                out_hidden_size=32,
                spatial_merge_size=2,
                temporal_patch_size=2,
                projection_intermediate_size=48,
            )
        ),
    ),
    "gemma4": ("Gemma4Config", "gemma4_text", {}, dict(vision_config=_SMALL_GEMMA4_VISION)),
    "qwen4_exp": (
        "Qwen4ExpConfig",
        "qwen4_exp_text",
        dict(rope_parameters={**_MROPE, "partial_rotary_factor": 1.0}),
        dict(
            vision_config=dict(
                _SMALL_VIT, out_hidden_size=32, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16
            )
        ),
    ),
    "inkling_mm_model": (
        "InklingConfig",
        "inkling_text",
        {},
        dict(
            vision_config=dict(text_hidden_size=32, patch_size=4, hidden_size=16, n_layers=1, num_attention_heads=2),
            audio_config=dict(text_hidden_size=32, n_mel_bins=8, mel_vocab_size=16),
        ),
    ),
    "muse_spark": (
        "MuseSparkConfig",
        "muse_spark_text",
        {},
        dict(
            vision_config=dict(
                patch_size=4,
                pos_emb_height=4,
                pos_emb_width=4,
                num_attention_heads=2,
                num_hidden_layers=1,
                hidden_size=16,
                intermediate_size=24,
            ),
            audio_config=dict(
                patch_sizes=[2, 2], hidden_sizes=[8, 16], depths=[1, 1], num_hidden_layers=2, out_hidden_size=32
            ),
            out_hidden_size=32,
            projector_hidden_size=24,
        ),
    ),
}


def tiny_moe_model(
    family: str = "mixtral", num_experts: int = 8, top_k: int = 2, seed: int = 0, **overrides
) -> nn.Module:
    """A randomly initialised tiny causal LM of `family` (eval mode, float32, eager experts).

    A vision-language family gets a tiny vision tower around the tiny language model of its text family
    (`_VISION_LANGUAGE`); `overrides` then apply to the language model's config.
    """
    import transformers

    from moeprune.arch.loading import _auto_class

    if family in _VISION_LANGUAGE:
        config_name, text_family, text_extra, wrapper = _VISION_LANGUAGE[family]
        _, text = _family_kwargs(text_family, num_experts, top_k)
        config = getattr(transformers, config_name)(text_config={**text, **text_extra, **overrides}, **wrapper)
    else:
        config_name, kwargs = _family_kwargs(family, num_experts, top_k)
        kwargs.update(overrides)
        config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    model = _auto_class(config).from_config(config)
    family_facts = get_family(config.model_type)
    routers = ("gate.weight", "router.weight")
    if family_facts is not None:
        routers += (f"{family_facts.router_attr}.{family_facts.router_weight}",)
    with torch.no_grad():  # random routers so routing is non-trivial (some families init them to zero)
        for name, param in model.named_parameters():
            if name.endswith(routers) and param.dim() == 2:
                param.normal_(0.0, 0.5)
    return model.eval()


FAMILIES_WITH_TINY_MODELS = (
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v2",
    "deepseek_v3",
    "phimoe",
    "flex_olmo",
    "granitemoe",
    "granitemoeshared",
    "mellum",
    "laguna",
    "ernie4_5_moe",
    "hunyuan_v1_moe",
    "aria_text",
    "glm4_moe",
    "glm4_moe_lite",
    "dots1",
    "solar_open",
    "axk1",
    "axk2",
    "deepseek_v32",
    "glm_moe_dsa",
    "cohere2_moe",
    "minimax_m2",
    "mimo_v2_flash",
    "beam",
    "kolibri1",
    "hy_v3",
    "exaone_moe",
    "afmoe",
    "flint",
    "granitemoe_swa",
    "gpt_oss",
    "qwen3_next",
    "qwen3_5_moe_text",
    "granitemoehybrid",
    "jamba",
    "minimax",
    "kimi_linear",
    "bailing_hybrid",
    "nemotron_h",
    "lfm2_moe",
    "minimax_m3_vl_text",
    "dots3_note_text",
    "qwen3_vl_moe",
    "glm4v_moe",
    "qwen3_5_moe",
    "aria",
    "mistral_large4",
    "mistral4",
    "minimax_m3_vl",
    "deepseek_ocr2",
    "unlimited_ocr",
    "dots3_note",
    "qwen3_omni_moe_thinker",
    "glm5_next",
    "openai_privacy_filter",
    "gemma4_text",
    "gemma4",
    "qwen4_exp_text",
    "qwen4_exp",
    "hy_v4",
    "inkling_text",
    "inkling_mm_model",
    "zaya",
    "muse_spark",
)


def tiny_vmoe_config(**overrides):
    """A tiny V-MoE configuration (8x8 single-channel images, 4 blocks, 4 experts, 3 labels)."""
    from moeprune.arch.vmoe import VMoEConfig

    values = dict(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        num_labels=3,
    )
    values.update(overrides)
    return VMoEConfig(**values)


def tiny_vmoe_model(seed: int = 0, **overrides) -> nn.Module:
    """A randomly initialised tiny V-MoE image classifier (eval mode)."""
    from moeprune.arch.vmoe import VMoEForImageClassification

    torch.manual_seed(seed)
    return VMoEForImageClassification(tiny_vmoe_config(**overrides)).eval()
