"""Architecture layer: find, describe and remove routed experts in Hugging Face MoE models."""

from moeprune.arch.adapter import MoEAdapter, MoELayer, get_adapter
from moeprune.arch.families import FAMILIES, Family, get_family
from moeprune.arch.loading import check_model_dir, load_model, save_model_dir, weights_sha256
from moeprune.arch.removal import merge_experts, remove_experts, validate_keep_sets

__all__ = [
    "FAMILIES",
    "Family",
    "MoEAdapter",
    "MoELayer",
    "check_model_dir",
    "get_adapter",
    "get_family",
    "load_model",
    "merge_experts",
    "remove_experts",
    "save_model_dir",
    "validate_keep_sets",
    "weights_sha256",
]
