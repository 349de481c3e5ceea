"""Pruning masks from scores: magnitude, Wanda, N:M patterns, OWL layer sparsities.

Papers:
- Wanda, Sun et al. 2023, https://arxiv.org/abs/2306.11695: score_ij = |W_ij| * ||X_j||_2, prune the
  lowest scores within each output row.
- OWL, Yin et al. 2023, https://arxiv.org/abs/2310.05175: per layer, D_l = fraction of Wanda scores above
  M * mean score; layers with more outliers are pruned less (docs/algorithms.md, "owl").

Conventions: a weight is a Linear weight `[out_features, in_features]`; a mask is a bool tensor of the
same shape with True = keep. Every function is pure except `apply_mask_`, which zeroes in place.

    # params.yaml (prune_unstructured section, for orientation)
    method: wanda        # magnitude | wanda | sparsegpt
    sparsity: 0.5
    owl: {enabled: true, m: 5.0, lam: 0.08}
    nm: null             # or "2:4"
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from moeprune.errors import MoepruneError
from moeprune.params import check_fraction, check_nm

MAX_LAYER_SPARSITY = 0.99


def check_sparsity(sparsity: float) -> float:
    """`sparsity` as a float if it lies in [0, 1), else a one-line MoepruneError (`validation.check_fraction`)."""
    return check_fraction(sparsity, "sparsity")


def _check_weight(weight: Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight [out, in], got shape {tuple(weight.shape)}")


def pruned_per_row(in_features: int, sparsity: float) -> int:
    """Number of weights each output row loses at `sparsity`: round(in_features * sparsity)."""
    return int(round(in_features * check_sparsity(sparsity)))


def row_mask_from_scores(scores: Tensor, sparsity: float) -> Tensor:
    """Keep-mask that drops exactly round(in * sparsity) lowest scores in every row.

    Args:
        scores: `[out, in]` importance scores (higher = keep).
        sparsity: fraction to prune per row, in [0, 1).

    Returns:
        Bool mask `[out, in]`, True = keep; every row keeps `in - round(in * sparsity)` entries.
    """
    _check_weight(scores)
    n_prune = pruned_per_row(scores.shape[1], sparsity)
    mask = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if n_prune:
        drop = torch.topk(scores, n_prune, dim=1, largest=False).indices  # [out, n_prune]
        mask.scatter_(1, drop, False)
    return mask


def global_mask_from_scores(scores: Tensor, sparsity: float) -> Tensor:
    """Keep-mask that drops exactly round(numel * sparsity) lowest scores of the whole matrix."""
    n_prune = int(round(scores.numel() * check_sparsity(sparsity)))
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune:
        drop = torch.topk(scores.flatten(), n_prune, largest=False).indices
        mask[drop] = False
    return mask.view(scores.shape)


def magnitude_mask(weight: Tensor, sparsity: float, per_row: bool = True) -> Tensor:
    """Magnitude pruning: drop the smallest |W_ij|.

    Args:
        weight: `[out, in]` Linear weight (any float dtype; compared in float32).
        sparsity: fraction to prune, in [0, 1).
        per_row: True (default) prunes exactly round(in * sparsity) per output row, like Wanda, so every
            method meets the same row-wise target; False uses one threshold over the whole matrix
            (exactly round(numel * sparsity) zeros, rows may differ).

    Returns:
        Bool keep-mask `[out, in]`.
    """
    _check_weight(weight)
    scores = weight.detach().abs().float()
    return row_mask_from_scores(scores, sparsity) if per_row else global_mask_from_scores(scores, sparsity)


def wanda_scores(weight: Tensor, sum_sq: Tensor) -> Tensor:
    """Wanda importance |W_ij| * ||X_j||_2 from the per-input-feature sum of squares.

    Args:
        weight: `[out, in]` Linear weight.
        sum_sq: `[in]` sum over calibration tokens of x_j^2 (see `InputStats.sum_sq`).

    Returns:
        Float32 scores `[out, in]`.
    """
    _check_weight(weight)
    if sum_sq.shape != (weight.shape[1],):
        raise ValueError(f"sum_sq has shape {tuple(sum_sq.shape)}, expected ({weight.shape[1]},)")
    norms = sum_sq.to(device=weight.device, dtype=torch.float64).clamp_min(0).sqrt().float()  # [in]
    return weight.detach().abs().float() * norms.unsqueeze(0)


def wanda_mask(weight: Tensor, sum_sq: Tensor, sparsity: float) -> Tensor:
    """Wanda keep-mask: drop exactly round(in * sparsity) lowest |W| * ||X|| scores per output row."""
    return row_mask_from_scores(wanda_scores(weight, sum_sq), sparsity)


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """N:M keep-mask: in every group of m consecutive inputs of a row keep the n highest scores.

    Args:
        scores: `[out, in]` importance scores, `in` divisible by m.
        n: weights kept per group (1 <= n < m).
        m: group size.

    Returns:
        Bool mask `[out, in]` with exactly n True values in each group of m.
    """
    _check_weight(scores)
    out_features, in_features = scores.shape
    check_nm(n, m, in_features)
    groups = scores.reshape(out_features, in_features // m, m)  # [out, in/m, m]
    keep = torch.topk(groups, n, dim=2).indices
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(2, keep, True)
    return mask.reshape(out_features, in_features)


def apply_mask_(weight: Tensor, mask: Tensor) -> Tensor:
    """Zero `weight` where `mask` is False, in place; works on views (e.g. `param[e, :I]`) of a parameter.

    Returns:
        `weight` itself, now pruned.
    """
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from weight shape {tuple(weight.shape)}")
    with torch.no_grad():
        weight.masked_fill_(~mask.to(device=weight.device, dtype=torch.bool), 0)
    return weight


def outlier_ratio(scores: Tensor | Sequence[Tensor], m: float = 5.0) -> float:
    """OWL's layer outlier ratio D_l: fraction of scores larger than m times their mean.

    Args:
        scores: Wanda scores of one layer, one tensor or a list (all Linears of the layer, pooled).
        m: outlier multiplier M (5 in OWL; STUN used 3).

    Returns:
        Fraction in [0, 1].
    """
    parts = [scores] if isinstance(scores, Tensor) else list(scores)
    total = sum(part.numel() for part in parts)
    if total == 0:
        raise ValueError("outlier_ratio needs at least one score")
    mean = sum(part.double().sum() for part in parts) / total
    above = sum(int((part.double() > m * mean).sum()) for part in parts)
    return above / total


def owl_layer_sparsities(outlier_ratios: Sequence[float], target: float, lam: float = 0.08) -> list[float]:
    """OWL per-layer sparsities whose mean is `target`; layers with more outliers are pruned less.

    D is mapped linearly onto [0, 2 * lam] (m_l) and sparsity_l = target - (m_l - mean(m)). If a value
    falls outside [0, 0.99], every layer is shifted by one common constant c and clamped, with c found
    by bisection so the clamped mean is again `target`; a common shift keeps the order of the layers.

    Args:
        outlier_ratios: D_l per layer.
        target: mean sparsity, in [0, 0.99].
        lam: OWL's lambda (the spread is at most 2 * lam).

    Returns:
        One sparsity per layer.
    """
    target = check_sparsity(target)
    if not outlier_ratios:
        raise ValueError("owl_layer_sparsities needs at least one layer")
    if target > MAX_LAYER_SPARSITY:
        raise MoepruneError(f"OWL target sparsity {target} exceeds {MAX_LAYER_SPARSITY}; lower --sparsity")
    if lam < 0:
        raise MoepruneError(f"OWL lambda {lam} is negative; use a value such as 0.08")
    ratios = torch.tensor([float(r) for r in outlier_ratios], dtype=torch.float64)
    spread = ratios.max() - ratios.min()
    if spread > 0:
        mapped = (ratios - ratios.min()) / spread * (2 * lam)  # m_l in [0, 2 lam]
    else:
        mapped = torch.zeros_like(ratios)
    raw = target - (mapped - mapped.mean())
    return _shift_into_range(raw, target).tolist()


def _shift_into_range(raw: Tensor, target: float, iterations: int = 200) -> Tensor:
    """clamp(raw + c, 0, MAX) with the common shift c chosen so the mean equals `target`."""

    def clamped(shift: float) -> Tensor:
        return (raw + shift).clamp(0.0, MAX_LAYER_SPARSITY)

    if bool(((raw >= 0) & (raw <= MAX_LAYER_SPARSITY)).all()):
        return raw
    low, high = -1.0 - float(raw.max()), 1.0 - float(raw.min())  # mean 0 at low, MAX at high
    for _ in range(iterations):
        mid = (low + high) / 2
        if float(clamped(mid).mean()) < target:
            low = mid
        else:
            high = mid
    return clamped((low + high) / 2)
