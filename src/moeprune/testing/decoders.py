"""Tiny configs of the plain MoE decoders, the DeepSeek-V3-like ones and those mixing sliding and full
attention: `{family: (config class name, kwargs)}` on top of `common.COMMON` (no torch)."""

from __future__ import annotations

from moeprune.testing.common import (
    TWO_GROUPS,
    WIDTHS,
    deepseek,
    dense_first,
    gpt_oss,
    indexer,
    mla,
    sliding,
    v3_like,
)


def decoder_specs(num_experts: int, top_k: int) -> dict[str, tuple[str, dict]]:
    """Config class name and kwargs per family, for `num_experts` routed experts and `top_k`."""
    return {
        "mixtral": ("MixtralConfig", dict(intermediate_size=48, num_local_experts=num_experts)),
        "qwen2_moe": (
            "Qwen2MoeConfig",
            dict(WIDTHS, shared_expert_intermediate_size=40, num_experts=num_experts, norm_topk_prob=True),
        ),
        "qwen3_moe": (
            "Qwen3MoeConfig",
            dict(WIDTHS, num_experts=num_experts, norm_topk_prob=True, head_dim=8),
        ),
        "olmoe": ("OlmoeConfig", dict(intermediate_size=24, num_experts=num_experts, norm_topk_prob=True)),
        "deepseek_v2": (
            "DeepseekV2Config",
            dict(**deepseek(num_experts), first_k_dense_replace=0, topk_group=1, topk_method="group_limited_greedy"),
        ),
        "deepseek_v3": (
            "DeepseekV3Config",
            dict(
                **deepseek(num_experts),
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
            dict(WIDTHS, num_local_experts=num_experts, norm_topk_prob=True, **sliding()),
        ),
        "minimax_m2": ("MiniMaxM2Config", dict(intermediate_size=24, num_local_experts=num_experts, head_dim=8)),
        "laguna": (
            "LagunaConfig",
            dict(
                WIDTHS,
                shared_expert_intermediate_size=40,
                num_experts=num_experts,
                **sliding(),
                num_attention_heads_per_layer=[4, 4],
                **dense_first(2),
            ),
        ),
        "ernie4_5_moe": (
            "Ernie4_5_MoeConfig",
            dict(
                WIDTHS,
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
            dict(WIDTHS, num_experts=num_experts, num_shared_experts=1, head_dim=8, **dense_first(2)),
        ),
        "glm4_moe": (
            "Glm4MoeConfig",
            dict(v3_like(num_experts), first_k_dense_replace=1, head_dim=8, use_qk_norm=True),
        ),
        "glm4_moe_lite": ("Glm4MoeLiteConfig", dict(v3_like(num_experts), **mla())),
        "dots1": ("Dots1Config", dict(v3_like(num_experts), first_k_dense_replace=1, head_dim=8)),
        "solar_open": ("SolarOpenConfig", dict(v3_like(num_experts), head_dim=8)),
        "axk1": ("AXK1Config", dict(v3_like(num_experts), **mla())),
        "axk2": ("AXK2Config", dict(v3_like(num_experts), **mla(), **indexer())),
        "deepseek_v32": (
            "DeepseekV32Config",
            dict(v3_like(num_experts), **mla(), **indexer(), first_k_dense_replace=1),
        ),
        "glm_moe_dsa": (
            "GlmMoeDsaConfig",
            dict(v3_like(num_experts), **mla(), **indexer(), first_k_dense_replace=1),
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
                WIDTHS,
                shared_expert_intermediate_size=40,
                num_experts=num_experts,
                **sliding(3),
                num_hidden_layers=3,
                mlp_only_layers=[0],
            ),
        ),
        "granitemoe_swa": (
            "GraniteMoeSWAConfig",
            dict(intermediate_size=24, num_local_experts=num_experts, shared_intermediate_size=40, sliding_window=16),
        ),
        "exaone_moe": (
            "ExaoneMoeConfig",
            dict(WIDTHS, num_experts=num_experts, num_shared_experts=1, **TWO_GROUPS, **sliding(3), **dense_first()),
        ),
        "afmoe": (
            "AfmoeConfig",
            dict(
                WIDTHS,
                num_experts=num_experts,
                num_shared_experts=1,
                num_dense_layers=1,
                num_hidden_layers=3,
                **sliding(3),
            ),
        ),
        "cohere2_moe": (
            "Cohere2MoeConfig",
            dict(intermediate_size=24, num_experts=num_experts, num_shared_experts=1, **sliding(2)),
        ),
        "mimo_v2_flash": (
            "MiMoV2FlashConfig",
            dict(WIDTHS, n_routed_experts=num_experts, **TWO_GROUPS, **sliding(), v_head_dim=8, **dense_first()),
        ),
        "beam": (
            "BeamConfig",
            dict(WIDTHS, num_experts=num_experts, **TWO_GROUPS, **sliding(), **dense_first()),
        ),
        "kolibri1": (
            "Kolibri1Config",
            dict(
                moe_intermediate_size=24,
                shared_expert_intermediate_size=40,
                num_local_experts=num_experts,
                **sliding(2),
            ),
        ),
        "gpt_oss": ("GptOssConfig", gpt_oss(num_experts)),
    }
