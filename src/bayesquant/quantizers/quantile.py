"""Quantile ("quantilization") quantizer of paper (c) §3.3: Gaussian quantiles as cell edges.

Fit N(m, s²) to each row (maximum likelihood: the mean and the population standard deviation, weighted when
importance weights are given). With m_b = 2ᵇ levels and F the fitted CDF, the cell edges are

    a_k = F⁻¹(k / m_b),  k = 1 .. m_b − 1                         (§3.3: every cell has probability 1/m_b)

and the reconstruction level of each cell is, by default (`midpoint="value"`, the paper's text),

    ā_k = (a_{k−1} + a_k) / 2                  for the finite cells k = 2 .. m_b − 1 (midpoint in value),
    ā_1 = F⁻¹(1 / 2m_b),  ā_{m_b} = F⁻¹((2m_b − 1) / 2m_b)        for the two infinite tail cells (medians),

which is the reading of DESIGN.md §2 ("reconstruction = interval midpoints, tails at F⁻¹(1/2m) and
F⁻¹((2m−1)/2m)"). `midpoint="probability"` instead puts every level at its cell's median,
ā_k = F⁻¹((2k − 1) / 2m_b), k = 1..m_b; it agrees with the paper at the tails and differs inside.

Codes: the codebook is self-contained, so by default a weight gets the index of its *nearest* level
(`assign_nearest`, never worse in squared error for these levels). That is not the same partition as the
paper's cells (a_{k−1}, a_k): the nearest-level boundaries are the midpoints between levels, not the a_k. Use
`assign_by_edges(w, gaussian_quantile_edges(...))` for the paper's partition. With bits=1 both coincide.

>>> fit_quantile(torch.tensor([[-1.0, 1.0]]), 1)  # N(0, 1): levels at Φ⁻¹(1/4), Φ⁻¹(3/4)
tensor([[-0.6745,  0.6745]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from bayesquant.quantizers._common import check_bits, check_choice, check_matrix, check_weights

__all__ = [
    "QUANTILE_MIDPOINTS",
    "assign_by_edges",
    "fit_gaussian",
    "fit_quantile",
    "gaussian_quantile_edges",
    "gaussian_quantile_levels",
]

QUANTILE_MIDPOINTS = ("value", "probability")


def _std_normal_quantile(p: Tensor) -> Tensor:
    """Φ⁻¹(p), exactly odd about p = ½ (Φ⁻¹(1 − p) = −Φ⁻¹(p)) for the dyadic p used here."""
    return torch.where(p > 0.5, -torch.special.ndtri(1 - p), torch.special.ndtri(p))


def fit_gaussian(w: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-row mean and (population) standard deviation of w (rows, cols), each (rows, 1), in float64.

    weights: (rows, cols) non-negative; a row whose weights sum to 0 falls back to equal weights.
    """
    x = check_matrix(w).double()
    if weights is None:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).square().mean(dim=1, keepdim=True)
    else:
        wt = check_weights(weights, x).double()
        total = wt.sum(dim=1, keepdim=True)
        wt = torch.where(total > 0, wt, torch.ones_like(wt))
        total = wt.sum(dim=1, keepdim=True)
        mean = (wt * x).sum(dim=1, keepdim=True) / total
        var = (wt * (x - mean).square()).sum(dim=1, keepdim=True) / total
    return mean, var.sqrt()


def gaussian_quantile_edges(mean: Tensor, std: Tensor, bits: int) -> Tensor:
    """Cell edges a_k = m + s·Φ⁻¹(k/2ᵇ), k = 1..2ᵇ−1, of N(m, s²) (paper (c) §3.3): (rows, 2ᵇ − 1).

    mean, std: (rows, 1).
    """
    m = 2 ** check_bits(bits)
    k = torch.arange(1, m, dtype=torch.float64, device=mean.device)
    return mean + std * _std_normal_quantile(k / m).to(mean.dtype)


def gaussian_quantile_levels(mean: Tensor, std: Tensor, bits: int, *, midpoint: str = "value") -> Tensor:
    """Reconstruction levels (rows, 2ᵇ), ascending, of N(m, s²) for the §3.3 cells (see the module docstring).

    mean, std: (rows, 1). midpoint: "value" (finite cells at (a_{k−1} + a_k)/2, the paper) or "probability"
    (every level at its cell's median F⁻¹((2k − 1)/2ᵇ⁺¹)).
    """
    bits = check_bits(bits)
    midpoint = check_choice(midpoint, "midpoint", QUANTILE_MIDPOINTS)
    m = 2**bits
    if midpoint == "probability":
        k = torch.arange(m, dtype=torch.float64, device=mean.device)
        return mean + std * _std_normal_quantile((2 * k + 1) / (2 * m)).to(mean.dtype)
    z_edges = _std_normal_quantile(torch.arange(1, m, dtype=torch.float64, device=mean.device) / m)  # (m − 1,)
    z_inner = (z_edges[:-1] + z_edges[1:]) / 2  # (m − 2,) finite cells
    tails = _std_normal_quantile(torch.tensor([1 / (2 * m), (2 * m - 1) / (2 * m)], dtype=torch.float64))
    z = torch.cat([tails[:1].to(z_inner.device), z_inner, tails[1:].to(z_inner.device)])  # (m,)
    return mean + std * z.to(mean.dtype)


def fit_quantile(w: Tensor, bits: int, *, weights: Tensor | None = None, midpoint: str = "value") -> Tensor:
    """Quantile codebook (rows, 2ᵇ) of w (rows, cols), ascending, in w's dtype (float32 for half inputs).

    weights: optional (rows, cols) importances for the Gaussian fit. Codes: `assign_nearest(w, codebook)` or,
    for the paper's cells, `assign_by_edges(w, gaussian_quantile_edges(*fit_gaussian(w), bits))`.
    """
    bits = check_bits(bits)
    mean, std = fit_gaussian(w, weights)
    out = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32
    return gaussian_quantile_levels(mean, std, bits, midpoint=midpoint).to(out)


def assign_by_edges(x: Tensor, edges: Tensor) -> Tensor:
    """Index of the cell (−∞, a_1], (a_1, a_2], ..., (a_{m−1}, ∞) holding each x: uint8 (rows, n).

    x: (rows, n); edges: (rows, m − 1) ascending.
    """
    return torch.searchsorted(edges.contiguous(), x.to(edges.dtype).contiguous()).to(torch.uint8)
