"""Stage `testbed`: build the embedded demo models (pretrained + fine-tuned) and their data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moeprune.errors import MoepruneError

LM_FAMILIES = ("mixtral", "qwen3_moe", "olmoe", "deepseek_v3")


def run(kind: str, out: Path, family: str = "mixtral", seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """Build the `lm` or `vision` testbed under `out`."""
    if kind == "lm":
        if family not in LM_FAMILIES:
            raise MoepruneError(f"unknown testbed family '{family}'; choose one of {', '.join(LM_FAMILIES)}")
        from moeprune.testbed.lm import build_lm_testbed

        summary = build_lm_testbed(Path(out), family=family, seed=seed, quick=quick)
    elif kind == "vision":
        from moeprune.testbed.vision import build_vision_testbed

        summary = build_vision_testbed(Path(out), seed=seed, quick=quick)
    else:
        raise MoepruneError(f"unknown testbed kind '{kind}'; choose lm or vision")
    print(json.dumps(summary, indent=2, default=str))
    return summary
