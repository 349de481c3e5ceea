"""Tiny vision-language wrappers: a small vision (and audio) tower around a covered text family's tiny
language model (no torch)."""

from __future__ import annotations

from moeprune.testing.common import rope

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
_SMALL_TOWER = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2)
_SMALL_IMAGE_TOWER = dict(_SMALL_TOWER, image_size=16, patch_size=4)


def _merging_vit(**more) -> dict:
    """The small ViT with a 2x2 spatial merger and 2-frame temporal patches (Qwen-VL style), out at the LM's width."""
    return dict(_SMALL_VIT, out_hidden_size=32, spatial_merge_size=2, temporal_patch_size=2, **more)


def _mrope(**more) -> dict:
    """Multimodal RoPE (sections of the rotary half for time, height and width)."""
    return dict(rope(), mrope_section=[2, 1, 1], **more)


# Vision-language wrappers: (config class, text family whose tiny config the language model reuses,
# text config changes, wrapper kwargs: a tiny vision tower).
VISION_LANGUAGE: dict[str, tuple[str, str, dict, dict]] = {
    "qwen3_vl_moe": (
        "Qwen3VLMoeConfig",
        "qwen3_moe",
        dict(rope_parameters=_mrope()),
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
        dict(rope_parameters=_mrope(partial_rotary_factor=1.0)),
        dict(vision_config=_merging_vit()),
    ),
    "qwen3_5_moe": (
        "Qwen3_5MoeConfig",
        "qwen3_5_moe_text",
        dict(rope_parameters=_mrope(partial_rotary_factor=0.5)),
        dict(vision_config=_merging_vit(num_position_embeddings=16)),
    ),
    "aria": (
        "AriaConfig",
        "aria_text",
        {},
        dict(
            vision_config=dict(_SMALL_IMAGE_TOWER),
            projector_patch_to_query_dict={16: 4},
        ),
    ),
    "mistral_large4": (
        "MistralLarge4Config",
        "glm_moe_dsa",
        dict(rope_parameters=rope()),
        dict(vision_config=dict(_SMALL_IMAGE_TOWER, head_dim=8)),
    ),
    "minimax_m3_vl": (
        "MiniMaxM3VLConfig",
        "minimax_m3_vl_text",
        {},
        dict(
            vision_config=dict(_SMALL_IMAGE_TOWER),
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
                encoder_config=dict(_SMALL_TOWER, image_size=16),
            )
        ),
    ),
    "dots3_note": (
        "Dots3NoteConfig",
        "dots3_note_text",
        {},
        dict(
            vision_config=dict(  # an MoE vision tower: left as it is
                _SMALL_TOWER,
                num_hidden_layers=2,
                patch_size=4,
                moe_intermediate_size=12,
                mlp_layer_types=["dense", "sparse"],
                num_local_experts=4,
                num_experts_per_tok=2,
                adapter_in_dim=16,
                adapter_out_dim=32,
            ),
            audio_config=dict(
                _SMALL_TOWER,
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
        dict(rope_parameters=_mrope(mrope_interleaved=True)),
        dict(
            vision_config=_merging_vit(num_position_embeddings=16, deepstack_visual_indexes=[0]),
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
        dict(vision_config=_merging_vit(projection_intermediate_size=48)),
    ),
    "gemma4": (
        "Gemma4Config",
        "gemma4_text",
        {},
        dict(
            vision_config=dict(
                _SMALL_TOWER, num_key_value_heads=2, head_dim=8, patch_size=4, position_embedding_size=64
            )
        ),
    ),
    "qwen4_exp": (
        "Qwen4ExpConfig",
        "qwen4_exp_text",
        dict(rope_parameters=_mrope(partial_rotary_factor=1.0)),
        dict(vision_config=_merging_vit(num_position_embeddings=16)),
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
            vision_config=dict(_SMALL_TOWER, patch_size=4, pos_emb_height=4, pos_emb_width=4),
            audio_config=dict(
                patch_sizes=[2, 2], hidden_sizes=[8, 16], depths=[1, 1], num_hidden_layers=2, out_hidden_size=32
            ),
            out_hidden_size=32,
            projector_hidden_size=24,
        ),
    ),
}
