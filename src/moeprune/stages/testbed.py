"""Stage `testbed`: build the embedded demo models (pretrained + fine-tuned) and their data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moeprune.errors import MoepruneError
from moeprune.outputs import claim_output
from moeprune.params import TestbedOptions


def run(kind: str, out: Path, params: TestbedOptions | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Build the `lm` or `vision` testbed under `out`.

    `params` (`moeprune.params.TestbedOptions`, already validated; defaults when None): preset, family, seed
    and quick; `family` and `preset` apply to `lm` only. `out` may hold an earlier testbed (its
    `testbed.json`); anything else only with `overwrite`.
    """
    params = params or TestbedOptions()
    out = claim_output(out, "testbed", overwrite=overwrite)
    if kind == "lm":
        from moeprune.testbed.lm import build_lm_testbed

        summary = build_lm_testbed(
            Path(out), family=params.family, preset=params.preset, seed=params.seed, quick=params.quick
        )
    elif kind == "vision":
        if params.family or params.preset:
            raise MoepruneError("--family and --preset apply to the lm testbed only; drop them for vision")
        from moeprune.testbed.vision import build_vision_testbed

        summary = build_vision_testbed(Path(out), seed=params.seed, quick=params.quick)
    else:
        raise MoepruneError(f"unknown testbed kind '{kind}'; choose lm or vision")
    print(json.dumps(_brief(summary), indent=2, default=str))
    return summary


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """The build record without its per-expert load matrices (they stay in testbed.json)."""
    diagnostics = summary.get("diagnostics")
    if not diagnostics:
        return summary
    nmi = {
        name: {layer: entry["nmi"] for layer, entry in diag["routing"]["layers"].items()}
        for name, diag in diagnostics.items()
    }
    perplexity = {name: diag["perplexity"] for name, diag in diagnostics.items()}
    return {**summary, "diagnostics": {"perplexity": perplexity, "routing_nmi": nmi}}
