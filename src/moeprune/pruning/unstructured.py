"""Unstructured pruning: input statistics, the method registry, and the total-sparsity rate.

The math lives in `masks.py` (magnitude, Wanda, N:M, OWL) and `sparsegpt.py`; the methods are declared,
torch-free, in `moeprune.catalog.unstructured` (needs, facts); this module attaches one entry point per
method (`prune_`) for the layer-by-layer runner (docs/algorithms.md, "Unstructured pruning"):

    stats = InputStats(in_features, need_hessian=method.needs_hessian)
    stats.add(x_routed_to_this_expert)                     # once per calibration batch
    method = UNSTRUCTURED_METHODS["wanda"]                 # lookup error lists the valid names
    mask = method.prune_(weight_view, stats, sparsity, nm=(2, 4))

Every `prune_` zeroes the weight in place (views of stacked expert parameters included) and returns the
keep-mask. Wanda and SparseGPT fall back to magnitude when the matrix saw no calibration token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from moeprune.catalog import Entry
from moeprune.catalog.unstructured import UNSTRUCTURED
from moeprune.errors import MoepruneError
from moeprune.pruning.masks import (
    apply_mask_,
    check_sparsity,
    magnitude_mask,
    nm_mask,
    outlier_ratio,
    owl_layer_sparsities,
    wanda_mask,
    wanda_scores,
)
from moeprune.pruning.sparsegpt import sparsegpt_prune_

__all__ = [
    "InputStats",
    "UNSTRUCTURED_METHODS",
    "UnstructuredMethod",
    "apply_mask_",
    "get_unstructured_method",
    "magnitude_mask",
    "nm_mask",
    "outlier_ratio",
    "owl_layer_sparsities",
    "owl_scores",
    "sparsegpt_prune_",
    "total_to_unstructured_rate",
    "wanda_mask",
    "wanda_scores",
]


class InputStats:
    """Running statistics of the inputs that reached one Linear (or one expert's matrix).

    Attributes:
        sum_sq: `[in]` float64 sum over tokens of x_j^2 (Wanda's ||X_j||_2^2).
        xtx: `[in, in]` float64 sum over tokens of x x^T (SparseGPT), or None without `need_hessian`.
        count: number of tokens added.
    """

    def __init__(self, in_features: int, need_hessian: bool = False, device: torch.device | str | None = None) -> None:
        """Start empty accumulators for inputs of width `in_features`.

        Args:
            in_features: input width of the Linear (or expert matrix).
            need_hessian: also accumulate `xtx` (SparseGPT).
            device: where the accumulators live; None follows the device of the first batch added.
        """
        self.in_features = in_features
        self.follow_input_device = device is None
        self.sum_sq = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.xtx: Tensor | None = None
        if need_hessian:
            self.xtx = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: Tensor) -> None:
        """Accumulate a batch of inputs `[..., in_features]` (for an expert: only the rows routed to it)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input width {x.shape[-1]} differs from in_features {self.in_features}")
        if self.follow_input_device and self.count == 0:
            self._move_to(x.device)
        rows = x.detach().reshape(-1, self.in_features).to(device=self.sum_sq.device, dtype=torch.float64)
        self.sum_sq += rows.square().sum(dim=0)
        if self.xtx is not None:
            self.xtx.addmm_(rows.T, rows)
        self.count += rows.shape[0]

    def _move_to(self, device: torch.device) -> None:
        self.sum_sq = self.sum_sq.to(device)
        if self.xtx is not None:
            self.xtx = self.xtx.to(device)


def owl_scores(weight: Tensor, stats: InputStats | None) -> Tensor:
    """Scores OWL counts outliers in: Wanda's |W| * ||X||, or |W| when no calibration token arrived."""
    if stats is None or stats.count == 0:
        return weight.detach().abs().float()
    return wanda_scores(weight, stats.sum_sq)


class PruneFn(Protocol):
    """Signature of a registered method: prune `weight` in place, return the keep-mask.

    `sparsity` is the per-row fraction in [0, 1); with `nm=(n, m)` the pattern decides instead (a
    sparsity of 1 - n/m). Methods may take extra keywords (sparsegpt: `blocksize`, `percdamp`).
    """

    def __call__(
        self, weight: Tensor, stats: InputStats | None, sparsity: float, nm: tuple[int, int] | None = None
    ) -> Tensor: ...


UnstructuredMethod = Entry
"""A registered method (`moeprune.catalog.unstructured`): `name`, `needs_inputs`, `needs_hessian`, `prune_`."""
UNSTRUCTURED_METHODS = UNSTRUCTURED  # name -> method; a missing name raises a MoepruneError listing the valid ones
_SPARSEGPT = UNSTRUCTURED.get("sparsegpt")
ROW_BLOCK_ELEMENTS = 1 << 22  # weights scored at once by the per-row methods (16 MB of float32 scores)


def get_unstructured_method(name: str) -> UnstructuredMethod:
    """Look up a method by name; an unknown name raises a MoepruneError listing the valid ones."""
    return UNSTRUCTURED_METHODS.get(name)


def _prune_rows_(weight: Tensor, row_mask: Callable[[Tensor], Tensor]) -> Tensor:
    """Prune `weight` in place a block of rows at a time with a per-row `row_mask`; return the whole keep-mask.

    Magnitude, Wanda and N:M decide each row on its own, so blocks give the same result as one call;
    they bound the float32 scores and top-k indices to ROW_BLOCK_ELEMENTS instead of several times
    the matrix (streaming mode holds one layer, and a whole-matrix pass would add ~1.5x an expert).
    """
    rows_per_block = max(1, ROW_BLOCK_ELEMENTS // max(1, weight.shape[-1]))
    masks = []
    for rows in weight.split(rows_per_block):  # views: pruning them prunes `weight`
        mask = row_mask(rows)
        apply_mask_(rows, mask)
        masks.append(mask)
    return torch.cat(masks) if len(masks) > 1 else masks[0]


@UNSTRUCTURED_METHODS.implements("magnitude", "prune_")
def prune_magnitude_(
    weight: Tensor, stats: InputStats | None, sparsity: float, nm: tuple[int, int] | None = None
) -> Tensor:
    """Zero the smallest |W| of every row (exact per-row count), or per N:M group; `stats` is unused."""
    check_sparsity(sparsity)
    if nm is None:
        return _prune_rows_(weight, lambda rows: magnitude_mask(rows, sparsity))
    return _prune_rows_(weight, lambda rows: nm_mask(rows.detach().abs().float(), *nm))


@UNSTRUCTURED_METHODS.implements("wanda", "prune_")
def prune_wanda_(
    weight: Tensor, stats: InputStats | None, sparsity: float, nm: tuple[int, int] | None = None
) -> Tensor:
    """Zero the lowest |W| * ||X|| per row (or per N:M group); magnitude when no token reached `weight`."""
    check_sparsity(sparsity)
    if stats is None or stats.count == 0:
        return prune_magnitude_(weight, None, sparsity, nm)
    if nm is None:
        return _prune_rows_(weight, lambda rows: wanda_mask(rows, stats.sum_sq, sparsity))
    return _prune_rows_(weight, lambda rows: nm_mask(wanda_scores(rows, stats.sum_sq), *nm))


@UNSTRUCTURED_METHODS.implements("sparsegpt", "prune_")
def prune_sparsegpt_(
    weight: Tensor,
    stats: InputStats | None,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    blocksize: int = _SPARSEGPT.default("blocksize"),
    percdamp: float = _SPARSEGPT.default("percdamp"),
) -> Tensor:
    """SparseGPT with OBS updates (exact per-row count); magnitude when no token reached `weight`."""
    check_sparsity(sparsity)
    if stats is None or stats.count == 0:
        return prune_magnitude_(weight, None, sparsity, nm)
    if stats.xtx is None:
        raise ValueError("sparsegpt needs InputStats(..., need_hessian=True)")
    return sparsegpt_prune_(weight, stats.xtx, stats.count, sparsity, blocksize, percdamp, nm)


def total_to_unstructured_rate(
    total_target: float, original_params: int, remaining_params: int, targeted_params: int | None = None
) -> float:
    """Unstructured rate on what expert pruning left that reaches total sparsity `total_target`.

    Total sparsity counts removed experts as zeros (docs/algorithms.md): after pruning a fraction r of the
    `targeted_params` (default: all `remaining_params`), nonzeros = remaining - r * targeted, and
    1 - nonzeros / original = T gives r = (remaining - (1 - T) * original) / targeted, which is
    1 - (1 - T) * original / remaining when every remaining weight is targeted.

    Args:
        total_target: total sparsity T in [0, 1).
        original_params: decoder-block Linear weights of the original model.
        remaining_params: those still present (nonzero) after expert pruning.
        targeted_params: how many of the remaining ones unstructured pruning may zero (e.g. experts only).

    Returns:
        The rate in [0, 1).
    """
    target = check_sparsity(total_target)
    targeted = remaining_params if targeted_params is None else targeted_params
    if not 0 < remaining_params <= original_params or not 0 < targeted <= remaining_params:
        raise ValueError(
            f"need 0 < targeted ({targeted}) <= remaining ({remaining_params}) <= original ({original_params})"
        )
    rate = (remaining_params - (1.0 - target) * original_params) / targeted
    reached = 1.0 - remaining_params / original_params
    if rate < -1e-9:
        raise MoepruneError(
            f"expert pruning alone already reaches total sparsity {reached:.4f} > target {target}; "
            "raise the total target or prune fewer experts"
        )
    if rate >= 1.0:
        raise MoepruneError(
            f"total sparsity {target} needs an unstructured rate of {rate:.4f} >= 1 on the targeted weights; "
            "lower the target, prune more experts, or target all Linears"
        )
    return max(rate, 0.0)
