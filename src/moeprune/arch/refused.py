"""MoE families that transformers ships but moeprune refuses, each with what is missing.

`tests/arch/test_family_coverage.py` enumerates every model_type whose modeling code uses the experts
interface (`@use_experts_implementation`); each must be in `families.FAMILIES` or here. Reasons were
read off transformers 5.23's modeling files (router class and attribute, block layout, expert flags).
A checkpoint of one of these families is refused from its config.json, before weights are read.
"""

from __future__ import annotations

from moeprune.errors import MoepruneError

REFUSED: dict[str, str] = {
    "deepseek_v4": "hash-routed layers (DeepseekV4HashRouter, by input_ids) and clamped experts are not handled yet",
    "diffusion_gemma": (
        "block diffusion: its forward samples a random canvas, so calibration passes are not reproducible"
    ),
    "ernie4_5_vl_moe": (
        "its text and vision experts share one expert count (moe_num_experts): text-only calibration cannot prune both"
    ),
    "inkling2": "vision-language wrapper around inkling2_text, whose layers read block_states (see inkling2_text)",
    "inkling2_text": (
        "its layers read block_states, attention residuals the model's loop builds from earlier layers' outputs; "
        "not rebuilt layer by layer"
    ),
    "qwen3_omni_moe": (
        "thinker and talker MoEs in a model with generate but no forward; its thinker is covered as "
        "qwen3_omni_moe_thinker"
    ),
}


def refusal(model_type: str) -> str | None:
    """Why moeprune refuses `model_type`, or None when it is not a refused MoE family."""
    return REFUSED.get(model_type)


def not_covered_error(model_type: str, reason: str) -> MoepruneError:
    """The one-line refusal every stage prints for an uncovered MoE family."""
    return MoepruneError(f"MoE family '{model_type}' is not covered: {reason}")


def check_not_refused(model_type: str | None) -> None:
    """Raise the one-line refusal when `model_type` (config.json's) is a refused MoE family."""
    reason = refusal(model_type or "")
    if reason is not None:
        raise not_covered_error(str(model_type), reason)
