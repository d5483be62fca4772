"""GPTQ (Frantar et al., 2022): quantize W column by column, spreading each column's rounding error over
the not-yet-quantized columns with the inverse Hessian (paper eqs. 2–3, Algorithm 1), with lazy block
updates, dampening, group-wise grids, act-order and static groups."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bayesquant.nn.qweight import QuantizedSegment, QuantizedWeight
from bayesquant.quantizers.uniform import UniformParams, fit_uniform


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
    # The loop walks columns; storing Wᵀ (columns, rows) makes every column a contiguous row, which is
    # several times faster on a CPU than strided column access.
    WT = W.t().contiguous()  # (columns, rows)
    QT = torch.zeros_like(WT)
    codesT = torch.zeros_like(WT)  # float while solving; integer when stored
    lossesT = torch.zeros_like(WT)
    n_groups = -(-columns // g)
    scales = torch.zeros(rows, n_groups)
    zeros = torch.zeros(rows, n_groups)
    maxq = 2**bits - 1
    static_scale = [p.scale[:, 0] for p in static]
    static_zero = [p.zero[:, 0] for p in static]
    scale = zero = torch.empty(0)  # set at the first column of each group

    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = WT[i1:i2].clone()  # (count, rows)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if static:
                grp = (int(perm[col]) if perm is not None else col) // g
                scale, zero = static_scale[grp], static_zero[grp]
            elif col % g == 0:
                # as the reference: the grid of a group comes from W with the updates of earlier blocks
                params = fit(WT[col : col + g].t())
                scale, zero = params.scale[:, 0], params.zero[:, 0]  # (rows,)
                scales[:, col // g], zeros[:, col // g] = scale, zero
            w = W1[i]  # (rows,)
            # q = scale·(clamp(round(w/scale) + zero, 0, maxq) − zero), inlined: this loop runs once per column
            c = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
            q = scale * (c - zero)
            codesT[col] = c
            QT[col] = q
            err = (w - q) / Hinv1[i, i]  # eq. 3: the error, scaled by the inverse Hessian's diagonal
            Err1[i] = err
            W1[i:].addr_(Hinv1[i, i:], err, alpha=-1.0)  # spread it over the block's remaining columns
        lossesT[i1:i2] = Err1**2 / 2  # (w − q)² / (2·[H⁻¹]_jj²), GPTQ's per-weight loss
        WT[i2:] -= Hinv[i1:i2, i2:].t() @ Err1  # lazy batch update of the columns after the block

    Q, codes, losses = QT.t(), codesT.t(), lossesT.t()
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
    segment = QuantizedSegment(bits=bits, codes=codes.to(torch.uint8), group_size=g, scale=scales, zero=zeros)
    qweight = QuantizedWeight(shape=tuple(W.shape), segments=[segment], perm=perm)
    return GPTQResult(qweight, Q, losses)
