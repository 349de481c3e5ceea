"""SparseGPT: one-shot pruning with OBS weight updates, one Linear (or one expert matrix) at a time.

Paper: Frantar & Alistarh 2023, https://arxiv.org/abs/2301.00774; reference code IST-DASLab/sparsegpt.

    H      = 2 / n * X^T X            (X: the n calibration inputs of this Linear, [n, in])
    dead j : H_jj = 1, W[:, j] = 0    (input features that never fire)
    H     += percdamp * mean(diag H) * I
    U      = upper Cholesky factor of H^-1
    per column block [i1, i2) of `blocksize`, left to right:
        saliency_ij = W_ij^2 / U_jj^2, prune the lowest; for each column j of the block:
        err = (w_j - q_j) / U_jj;  W[:, j:] -= err U[j, j:]   (OBS update of the remaining weights)
        then the block's error updates all later columns: W[:, i2:] -= Err U[i1:i2, i2:]

Target sparsity is exact PER ROW over the whole row: row r prunes round(in * sparsity) weights, of which
block [i1, i2) takes round(i2 * s) - round(i1 * s) (the counts telescope to the row total). The reference
code uses one threshold per block over all rows instead; per row matches Wanda's comparison group.
With `nm=(n, m)` every group of m inputs keeps n weights, chosen when the group's first column is reached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moeprune.errors import MoepruneError
from moeprune.params import check_nm
from moeprune.pruning.masks import check_sparsity


def sparsegpt_prune_(
    weight: Tensor,
    xtx: Tensor,
    count: int,
    sparsity: float,
    blocksize: int = 128,
    percdamp: float = 0.01,
    nm: tuple[int, int] | None = None,
) -> Tensor:
    """Prune `weight` in place with SparseGPT and return the keep-mask.

    Args:
        weight: `[out, in]` Linear weight, or a view of one expert's matrix inside a stacked parameter;
            computed in float32, written back in its own dtype.
        xtx: `[in, in]` sum over calibration tokens of x x^T (`InputStats.xtx`, float64).
        count: number of calibration tokens summed into `xtx` (> 0).
        sparsity: fraction of each row to prune, in [0, 1); ignored when `nm` is given.
        blocksize: columns per lazy-update block (rounded down to a multiple of m with `nm`).
        percdamp: dampening, as a fraction of the mean diagonal of H.
        nm: optional (n, m): keep n of every m consecutive inputs.

    Returns:
        Bool keep-mask `[out, in]` (True = keep). Columns of dead inputs are zeroed as well, so the
        weight may hold more zeros than the mask's False entries.
    """
    out_features, in_features = _check_inputs(weight, xtx, count, blocksize)
    if nm is not None:
        check_nm(nm[0], nm[1], in_features)
        blocksize = max(nm[1], blocksize // nm[1] * nm[1])
    else:
        sparsity = check_sparsity(sparsity)
    # Work on W^T [in, out]: an input column of W is then one contiguous row (rank-1 updates run ~10x faster).
    work_t = weight.detach().T.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    hinv = _inverse_hessian_factor(xtx, count, work_t, percdamp)  # [in, in], upper triangular
    prune_t = torch.zeros(in_features, out_features, dtype=torch.bool, device=work_t.device)
    for start in range(0, in_features, blocksize):
        end = min(start + blocksize, in_features)
        _prune_block_(work_t, hinv, prune_t, start, end, sparsity, nm)
    with torch.no_grad():
        weight.copy_(work_t.T)
    return ~prune_t.T.contiguous()


def _check_inputs(weight: Tensor, xtx: Tensor, count: int, blocksize: int) -> tuple[int, int]:
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if xtx.shape != (in_features, in_features):
        raise ValueError(f"xtx has shape {tuple(xtx.shape)}, expected ({in_features}, {in_features})")
    if count <= 0:
        raise ValueError("sparsegpt_prune_ needs calibration inputs (count > 0); fall back to magnitude")
    if blocksize < 1:
        raise MoepruneError(f"SparseGPT blocksize {blocksize} must be a positive integer, e.g. 128")
    return out_features, in_features


def _inverse_hessian_factor(xtx: Tensor, count: int, work_t: Tensor, percdamp: float) -> Tensor:
    """Upper Cholesky factor of (H + damp I)^-1 in float32; zeroes the rows of dead inputs in `work_t`."""
    hessian = xtx.to(device=work_t.device, dtype=torch.float64) * (2.0 / count)  # H = 2/n X^T X
    diag = torch.diagonal(hessian)
    dead = diag == 0
    diag[dead] = 1.0  # diagonal is a view: writes into hessian
    work_t[dead] = 0
    diag += percdamp * diag.mean()
    factor, info = torch.linalg.cholesky_ex(hessian)
    if int(info) != 0:
        raise MoepruneError(
            f"SparseGPT Hessian is not positive definite (percdamp={percdamp}); raise percdamp, e.g. 0.1"
        )
    identity = torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
    factor_inv = torch.linalg.solve_triangular(factor, identity, upper=False)  # L^-1; 3x faster on CPU
    inverse = factor_inv.T @ factor_inv  # H^-1 = L^-T L^-1
    return torch.linalg.cholesky(inverse, upper=True).float()


def _prune_block_(
    work_t: Tensor,
    hinv: Tensor,
    prune_t: Tensor,
    start: int,
    end: int,
    sparsity: float,
    nm: tuple[int, int] | None,
) -> None:
    """Choose the pruned weights of inputs [start, end), apply OBS updates, propagate the error.

    `work_t` is W^T `[in, out]` and `prune_t` its prune flags; both are updated in place.
    """
    block = work_t[start:end]  # [B, out] view: row j is input column start + j of W
    hinv_block = hinv[start:end, start:end]  # [B, B]
    hinv_diag = torch.diagonal(hinv_block).unsqueeze(1)  # [B, 1]
    errors = torch.empty_like(block)
    block_prune = prune_t[start:end]  # [B, out] view
    if nm is None:
        n_prune = round(end * sparsity) - round(start * sparsity)
        _choose_lowest_(block_prune, block.square() / hinv_diag.square(), n_prune)
    for col in range(end - start):
        if nm is not None and col % nm[1] == 0:
            group = slice(col, col + nm[1])
            saliency = block[group].square() / hinv_diag[group].square()  # [m, out]
            _choose_lowest_(block_prune[group], saliency, nm[1] - nm[0])
        w = block[col]  # [out]
        q = torch.where(block_prune[col], torch.zeros_like(w), w)
        err = (w - q) / hinv_block[col, col]
        block[col:].addr_(hinv_block[col, col:], err, alpha=-1)  # rank-1 OBS update, in place
        block[col] = q
        errors[col] = err
    work_t[end:].addmm_(hinv[start:end, end:].T, errors, alpha=-1)  # lazy update of later inputs


def _choose_lowest_(prune_t: Tensor, saliency: Tensor, n_prune: int) -> None:
    """Flag the `n_prune` lowest-saliency entries of every output (column of `prune_t` [B, out])."""
    if n_prune > 0:
        prune_t.scatter_(0, torch.topk(saliency, n_prune, dim=0, largest=False).indices, True)
