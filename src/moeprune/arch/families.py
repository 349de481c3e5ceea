"""Per-family facts that the generic stacked-expert adapter cannot discover from the modules alone: one
entry per covered family (what an entry can say: `arch.family_facts.Family`).

Everything else (where MoE blocks live, router and expert tensors, layout flags) is found by walking
the model; see `arch.adapter`. Facts checked against transformers 5.23 (docs/transformers-notes.md).
"""

from __future__ import annotations

from dataclasses import replace

from moeprune.arch.family_facts import (
    INKLING_NAEE,
    PROJECTED_NAEE,
    ZAYA_NAEE,
    Family,
    deepseek_v2_groups,
    n_group_set,
    n_shared_experts,
    never,
    norm_topk_prob,
    one,
    v3_like,
)

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("mixtral", ("num_local_experts",), gate="softmax -> top-k -> renormalise"),
        Family(
            "qwen2_moe",
            ("num_experts",),
            gate="softmax -> top-k (renormalise if norm_topk_prob)",
            renormalises=norm_topk_prob,
            shared_attrs=("shared_expert", "shared_expert_gate"),
        ),
        Family(
            "qwen3_moe",
            ("num_experts", "num_local_experts"),
            gate="softmax -> top-k (renormalise if norm_topk_prob)",
            renormalises=norm_topk_prob,
        ),
        Family(
            "olmoe",
            ("num_experts",),
            gate="softmax -> top-k (renormalise if norm_topk_prob)",
            renormalises=norm_topk_prob,
        ),
        Family(
            "deepseek_v2",
            ("n_routed_experts",),
            gate="softmax -> (group-limited) top-k, scaled",
            renormalises=never,
            shared_attrs=("shared_experts",),
            group_routing=deepseek_v2_groups,
        ),
        v3_like("deepseek_v3"),
        Family("phimoe", ("num_local_experts",), router_attr="router", gate="sparsemixer", renormalises=never),
        Family(
            "flex_olmo",
            ("num_experts",),
            gate="softmax -> top-k (renormalise if norm_topk_prob)",
            renormalises=norm_topk_prob,
        ),
        Family("granitemoe", ("num_local_experts",), router_attr="router", gate="top-k logits -> softmax"),
        Family(
            "granitemoeshared",
            ("num_local_experts",),
            router_attr="router",
            gate="top-k logits -> softmax",
            shared_attrs=("shared_mlp",),
        ),
        Family(
            "mellum",
            ("num_local_experts",),
            gate="softmax -> top-k (renormalise if norm_topk_prob)",
            renormalises=norm_topk_prob,
        ),
        Family(
            "laguna",
            ("num_experts",),
            gate="sigmoid + correction bias -> top-k -> renormalise, scaled",
            shared_attrs=("shared_experts",),
        ),
        Family(
            "ernie4_5_moe",
            ("moe_num_experts",),
            gate="softmax -> top-k by softmax + correction bias -> renormalise",
            shared_attrs=("shared_experts",),
        ),
        Family(
            "hunyuan_v1_moe",
            ("num_experts",),
            top_k_fields=("moe_topk",),
            router_weight="wg.weight",
            gate="softmax -> top-k -> renormalise",
            shared_attrs=("shared_mlp",),
        ),
        Family(
            "aria_text",
            ("moe_num_experts",),
            top_k_fields=("moe_topk",),
            router_attr="router",
            gate="top-k logits -> softmax",
            shared_attrs=("shared_experts",),
        ),
        v3_like("glm4_moe"),
        v3_like("glm4_moe_lite"),
        v3_like("dots1"),
        v3_like("solar_open"),
        v3_like("axk1"),
        v3_like("axk2", group_routing=n_group_set),
        v3_like("deepseek_v32"),
        v3_like("glm_moe_dsa"),
        Family(
            "cohere2_moe",
            ("num_experts",),
            gate="top-k logits -> softmax, or sigmoid (renormalise if norm_topk_prob)",
            shared_attrs=("shared_experts",),
        ),
        Family(
            "minimax_m2",
            ("num_local_experts",),
            gate="sigmoid + block-level correction bias -> top-k -> renormalise",
            router_inputs=("e_score_correction_bias",),
        ),
        v3_like("mimo_v2_flash", shared_attrs=()),
        v3_like("beam", ("num_experts",), shared_attrs=()),
        Family(
            "kolibri1",
            ("num_local_experts",),
            gate="logits + correction bias -> top-k -> sigmoid (renormalise if norm_topk_prob)",
            shared_attrs=("shared_experts",),
        ),
        Family(
            "hy_v3",
            ("num_experts",),
            router_inputs=("e_score_correction_bias",),
            gate="sigmoid + block-level correction bias -> top-k -> renormalise, scaled",
            shared_attrs=("shared_experts",),
        ),
        v3_like("exaone_moe", ("num_experts",)),
        Family(
            "afmoe",
            ("num_experts",),
            router_attr="router",
            router_weight="gate.weight",
            router_inputs=("expert_bias",),
            router_takes_batch=True,
            gate="sigmoid + block-level expert bias -> top-k -> renormalise, scaled",
            shared_attrs=("shared_experts",),
        ),
        Family(
            "flint",
            ("num_experts",),
            gate="sigmoid -> top-k (renormalise if norm_topk_prob)",
            shared_attrs=("shared_expert",),
        ),
        Family(
            "granitemoe_swa",
            ("num_local_experts",),
            router_attr="router",
            gate="top-k logits -> softmax",
            shared_attrs=("shared_mlp",),
        ),
        Family("gpt_oss", ("num_local_experts",), router_attr="router", gate="top-k logits (+ router bias) -> softmax"),
        # Hybrid models: linear-attention, mamba or short-conv layers beside the attention ones (each layer
        # gets its own mask from the model's forward: layerwise.capture_block_inputs).
        Family(
            "qwen3_next",
            ("num_experts",),
            gate="softmax -> top-k (renormalise if norm_topk_prob)",
            renormalises=norm_topk_prob,
            shared_attrs=("shared_expert", "shared_expert_gate"),
        ),
        Family(
            "qwen3_5_moe_text",
            ("num_experts",),
            gate="softmax -> top-k -> renormalise",
            shared_attrs=("shared_expert", "shared_expert_gate"),
        ),
        Family(
            "granitemoehybrid",
            ("num_local_experts",),
            router_attr="router",
            gate="top-k logits -> softmax",
            shared_attrs=("shared_mlp",),
        ),
        Family("jamba", ("num_experts",), router_attr="router", gate="softmax -> top-k", renormalises=never),
        Family("minimax", ("num_local_experts",), gate="softmax -> top-k -> renormalise"),
        v3_like("kimi_linear", ("num_experts",)),
        v3_like("bailing_hybrid", ("num_experts",)),
        v3_like("nemotron_h", ("n_routed_experts",)),
        Family(
            "lfm2_moe",
            ("num_experts",),
            router_inputs=("expert_bias",),
            gate="sigmoid (+ block-level expert bias) -> top-k (renormalise if norm_topk_prob), scaled",
        ),
        Family(
            "minimax_m3_vl_text",
            ("num_local_experts",),
            gate="sigmoid + correction bias -> top-k -> renormalise, scaled",
            shared_attrs=("shared_experts",),
        ),
        v3_like("dots3_note_text"),
        Family(
            "qwen4_exp_text",
            ("num_experts",),
            gate="softmax -> top-k (renormalise if norm_topk_prob)",
            renormalises=norm_topk_prob,
            shared_attrs=("shared_expert", "shared_expert_gate"),
        ),
        # 'shared' indexer layers reuse the previous layer's top-k indices (layerwise passes them on).
        v3_like("hy_v4", group_routing=n_group_set),
        # The router also scores the shared experts (rows after the routed ones); their gates are normalised
        # with the chosen routed experts'.
        Family(
            "inkling_text",
            ("n_routed_experts",),
            router_extra_rows=n_shared_experts,
            gate="sigmoid + correction bias -> top-k; softmax of log-sigmoids over top-k and shared, scaled",
            shared_attrs=("shared_experts",),
            naee_refusal=INKLING_NAEE,
        ),
        # Vision-language wrappers: the language model's MoE layers are pruned (count fields are those
        # of its text_config); the vision tower is left as it is.
        Family("qwen3_vl_moe", ("num_local_experts",), gate="softmax -> top-k -> renormalise"),
        v3_like("mistral4"),
        v3_like("glm5_next"),
        # Router and experts in the decoder layer itself, beside a dense MLP: the "block" is the layer; the
        # router reads the residual stream, the experts a normalised copy.
        Family(
            "gemma4_text",
            ("num_experts",),
            top_k_fields=("top_k_experts",),
            router_attr="router",
            router_weight="proj.weight",
            gate="softmax -> top-k -> renormalise, per-expert scale",
        ),
        # An MLP router (down_proj to router_hidden_size, norm, fc1, fc2, out_proj) that also reads the previous
        # layer's router states (layerwise passes them on); its last row scores a skip expert (no compute).
        Family(
            "zaya",
            ("num_experts",),
            router_weight="router_mlp.out_proj.weight",
            router_takes_batch=True,
            router_extra_rows=one,
            extended_count_attrs=("num_router_classes",),
            naee_refusal=ZAYA_NAEE,
            gate="MLP router (+ previous layer's router states) -> softmax -> top-k by softmax + balancing bias "
            "(or a skip expert)",
            renormalises=never,
        ),
        # A token classifier (AutoModelForTokenClassification) with gpt_oss-style experts.
        Family(
            "openai_privacy_filter",
            ("num_local_experts",),
            router_attr="router",
            gate="top-k logits (+ router bias) -> softmax",
        ),
        Family(
            "qwen3_omni_moe_thinker",
            ("num_experts",),
            gate="softmax -> top-k (renormalise if norm_topk_prob)",
            renormalises=norm_topk_prob,
        ),
        # The block projects the hidden states down to moe_hidden_size before the routed experts (which
        # run at that width, each with a post-expert norm) and back up after; the router reads the hidden states.
        Family(
            "muse_spark",
            ("num_local_experts",),
            experts_read_projection=True,
            naee_refusal=PROJECTED_NAEE,
            gate="sigmoid + correction bias -> top-k -> renormalise, scaled",
        ),
        Family("vmoe", ("num_local_experts",), gate="softmax -> top-k -> renormalise", renormalises=norm_topk_prob),
    )
}


# Families whose experts, routers and counts the adapter and removal handle (tests/arch/test_arch_removal.py
# round-trips each like a covered family) but that a stage outside arch/ cannot run yet: arch/refused.py
# says which. `get_family` does not return them; moving an entry to FAMILIES covers the family.
# Vision-language wrappers whose language model has the facts of a covered text family (their counts live
# in text_config): the same entry under the wrapper's model_type.
WRAPPERS: dict[str, str] = {
    "glm4v_moe": "glm4_moe",
    "qwen3_5_moe": "qwen3_5_moe_text",
    "aria": "aria_text",
    "mistral_large4": "glm_moe_dsa",
    "minimax_m3_vl": "minimax_m3_vl_text",
    "deepseek_ocr2": "deepseek_v2",
    "unlimited_ocr": "deepseek_v2",
    "dots3_note": "dots3_note_text",
    "gemma4": "gemma4_text",
    "qwen4_exp": "qwen4_exp_text",
    "inkling_mm_model": "inkling_text",
}
FAMILIES.update({wrapper: replace(FAMILIES[text], name=wrapper) for wrapper, text in WRAPPERS.items()})

PENDING: dict[str, Family] = {}


def get_family(model_type: str) -> Family | None:
    """The family entry for a config `model_type`, or None when moeprune does not cover it."""
    return FAMILIES.get(model_type)


def covered_families() -> str:
    """Comma-separated list of covered families, for error messages."""
    return ", ".join(sorted(FAMILIES))
