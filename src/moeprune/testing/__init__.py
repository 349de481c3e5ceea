"""Tiny random MoE models of every covered family, for tests and benchmarks (CPU, seconds).

The configs live in `decoders.py`, `special.py` and `vision_language.py`; `FAMILIES_WITH_TINY_MODELS` is
every family they build (text configs used only as a wrapper's language model excluded).
"""

from __future__ import annotations

import torch
from torch import nn

from moeprune.arch.families import get_family
from moeprune.testing.common import COMMON
from moeprune.testing.decoders import decoder_specs
from moeprune.testing.special import special_specs
from moeprune.testing.vision_language import VISION_LANGUAGE

LANGUAGE_MODELS_ONLY = ("glm5_next_text", "muse_spark_text")  # built only inside their wrappers


def _family_kwargs(family: str, num_experts: int, top_k: int) -> tuple[str, dict]:
    specs = {**decoder_specs(num_experts, top_k), **special_specs(num_experts, top_k)}
    if family not in specs:
        raise ValueError(f"no tiny config for family {family!r}; known: {sorted(specs)}")
    name, extra = specs[family]
    return name, {**COMMON, "num_experts_per_tok": top_k, **extra}


def tiny_moe_model(
    family: str = "mixtral", num_experts: int = 8, top_k: int = 2, seed: int = 0, **overrides
) -> nn.Module:
    """A randomly initialised tiny causal LM of `family` (eval mode, float32, eager experts).

    A vision-language family gets a tiny vision tower around the tiny language model of its text family
    (`VISION_LANGUAGE`); `overrides` then apply to the language model's config.
    """
    import transformers

    from moeprune.arch.loading import _auto_class

    if family in VISION_LANGUAGE:
        config_name, text_family, text_extra, wrapper = VISION_LANGUAGE[family]
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


_BUILT = [*decoder_specs(8, 2), *special_specs(8, 2), *VISION_LANGUAGE]
FAMILIES_WITH_TINY_MODELS = tuple(family for family in _BUILT if family not in LANGUAGE_MODELS_ONLY)


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
