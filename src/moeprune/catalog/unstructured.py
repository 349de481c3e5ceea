"""The unstructured pruning methods: names, inputs and facts (torch-free; `pruning/unstructured.py` implements them).

Facts:
    needs_inputs: the layer-by-layer runner collects calibration inputs (`InputStats`) for it.
    needs_hessian: it needs `InputStats(..., need_hessian=True)` (the inputs' X^T X).

`COPY` ("none") is not a method: `prune-unstructured --method none` copies the model unchanged.
"""

from __future__ import annotations

from moeprune.catalog import Option, Registry

UNSTRUCTURED = Registry(
    "unstructured method",
    needs=("calibration",),
    facts={"needs_inputs": False, "needs_hessian": False},
    listing="choose one of",
)
COPY = "none"

UNSTRUCTURED.declare("magnitude", "The smallest weight magnitudes of every row (or N:M group)")
UNSTRUCTURED.declare(
    "wanda",
    "The smallest weight magnitude times input norm of every row, expert-aware (Sun et al., 2023)",
    needs=("calibration",),
    needs_inputs=True,
)
UNSTRUCTURED.declare(
    "sparsegpt",
    "Optimal-brain-surgeon pruning that updates the kept weights (Frantar and Alistarh, 2023)",
    needs=("calibration",),
    options={
        "blocksize": Option(int, 128, "columns pruned and updated at once"),
        "percdamp": Option(float, 0.01, "dampening of the Hessian diagonal, as a fraction of its mean"),
    },
    needs_inputs=True,
    needs_hessian=True,
)


def unstructured_choices() -> tuple[str, ...]:
    """Every `--method` value of `prune-unstructured`: the methods, then `none` (copy)."""
    return (*UNSTRUCTURED.names(), COPY)


__all__ = ["COPY", "UNSTRUCTURED", "unstructured_choices"]
