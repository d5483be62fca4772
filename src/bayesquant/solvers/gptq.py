"""GPTQ (Frantar et al., 2022): quantize W column by column, spreading each column's rounding error over
the not-yet-quantized columns with the inverse Hessian (paper eqs. 2–3, Algorithm 1), with lazy block
updates, dampening, group-wise grids, act-order and static groups."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bayesquant.nn.qweight import QuantizedSegment, QuantizedWeight
from bayesquant.quantizers.uniform import UniformParams, dequantize_uniform, fit_uniform, quantize_uniform


@dataclass(frozen=True)
class GPTQResult:
    qweight: QuantizedWeight
    dequantized: torch.Tensor  # (rows, columns) float32, original column order
    losses: torch.Tensor  # (rows, columns) per-weight loss (w − q)² / (2·[H⁻¹]_jj²), original column order


def inverse_hessian_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = damp · mean(diag H) (the reference's dampening)."""
    H = H.clone()
    idx = torch.arange(H.shape[0], device=H.device)
    H[idx, idx] += damp * torch.mean(torch.diag(H))
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = None,
    symmetric: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
) -> GPTQResult:
    """Quantize W (rows, columns) given the layer Hessian H (columns, columns)."""
    W = W.detach().clone().float()
    H = H.detach().clone().float()
    rows, columns = W.shape
    g = columns if not group_size or group_size >= columns else group_size
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    def fit(cols: torch.Tensor) -> UniformParams:
        return fit_uniform(cols, bits, symmetric=symmetric, method="minmax")

    static: list[UniformParams] = []
    if static_groups:  # grids fixed up front from the original (unpermuted) weights
        static = [fit(W[:, i : i + g]) for i in range(0, columns, g)]

    perm = None
    if act_order:  # quantize the columns with the largest Hessian diagonal first
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]

    Hinv = inverse_hessian_cholesky(H, damp)
    Q = torch.zeros_like(W)
    codes = torch.zeros(rows, columns, dtype=torch.long)
    losses = torch.zeros_like(W)
    n_groups = -(-columns // g)
    scales = torch.zeros(rows, n_groups)
    zeros = torch.zeros(rows, n_groups)
    params = static[0] if static else fit(W)

    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if static:
                grp = (int(perm[col]) if perm is not None else col) // g
                params = static[grp]
            elif col % g == 0:
                # as the reference: the grid of a group comes from W with the updates of earlier blocks
                params = fit(W[:, col : col + g])
                scales[:, col // g], zeros[:, col // g] = params.scale[:, 0], params.zero[:, 0]
            w = W1[:, i : i + 1]  # (rows, 1)
            c = quantize_uniform(w, params)
            q = dequantize_uniform(c, params)[:, 0]
            codes[:, col] = c[:, 0].long()
            Q[:, col] = q
            d = Hinv1[i, i]
            err = (w[:, 0] - q) / d
            losses[:, col] = (w[:, 0] - q) ** 2 / d**2 / 2
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if perm is not None:
        invperm = torch.argsort(perm)
        Q, losses = Q[:, invperm], losses[:, invperm]
    if static:
        # static groups live in the original column order: store codes unpermuted, no permutation needed
        if perm is not None:
            codes = codes[:, torch.argsort(perm)]
        scales = torch.cat([p.scale for p in static], dim=1)
        zeros = torch.cat([p.zero for p in static], dim=1)
        perm = None
    segment = QuantizedSegment(bits=bits, codes=codes, group_size=g, scale=scales, zero=zeros)
    qweight = QuantizedWeight(shape=tuple(W.shape), segments=[segment], perm=perm)
    return GPTQResult(qweight, Q, losses)
