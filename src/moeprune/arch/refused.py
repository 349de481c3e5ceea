"""MoE families that transformers ships but moeprune refuses, each with what is missing.

`tests/test_family_coverage.py` enumerates every model_type whose modeling code uses the experts
interface (`@use_experts_implementation`); each must be in `families.FAMILIES` or here. Reasons were
read off transformers 5.23's modeling files (router class and attribute, block layout, expert flags).
A checkpoint of one of these families is refused from its config.json, before weights are read.
"""

from __future__ import annotations

from moeprune.errors import MoepruneError

_HYBRID = "hybrid layers ({}) beside the MoE blocks are not handled yet"
_VL = "vision-language wrapper ({}); its language MoE is not handled yet"
_NO_ENTRY = "{}; no family entry or round-trip test yet"

REFUSED: dict[str, str] = {
    "deepseek_v4": "hash-routed layers (DeepseekV4HashRouter, by input_ids) and clamped experts are not handled yet",
    "diffusion_gemma": (
        "block diffusion: an encoder and a decoder stack, both with MoE layers (their indices collide); not handled yet"
    ),
    "ernie4_5_vl_moe": _VL.format("Ernie4.5-VL, modality-specific text and vision experts"),
    "inkling2": _VL.format("Inkling2; its text model also has hybrid short-conv layers"),
    "inkling2_text": _HYBRID.format("short conv / mamba"),
    "muse_spark": _VL.format("MuseSpark; its MoE block adds pre/post expert projections"),
    "qwen3_omni_moe": _VL.format("Qwen3-Omni, thinker and talker MoEs"),
    "zaya": "router 'gate' is an MLP (ZayaRouter: norm, fc1, fc2, out_proj), not one weight; not handled yet",
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
