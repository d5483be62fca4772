"""GPTQ (Frantar et al., 2022): quantize W column by column, spreading each column's rounding error over
the not-yet-quantized columns with the inverse Hessian (paper eqs. 2–3, Algorithm 1), with lazy block
updates, dampening, group-wise grids, act-order and static groups."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bayesquant.nn.qweight import QuantizedSegment, QuantizedWeight
from bayesquant.quantizers import QUANTIZERS
from bayesquant.quantizers.uniform import UniformParams, fit_uniform

CODEBOOKS = ("lloyd_max", "quantile")  # the non-uniform codebooks the mixed solver can fit per grid


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
        if static or n_groups == 1:
            # static groups live in the original column order, and one grid per row does not depend on the
            # order: store the codes unpermuted, no permutation needed
            codes, perm = codes[:, invperm], None
    if static:
        scales = torch.cat([p.scale for p in static], dim=1)
        zeros = torch.cat([p.zero for p in static], dim=1)
    segment = QuantizedSegment(bits=bits, codes=codes.to(torch.uint8), group_size=g, scale=scales, zero=zeros)
    qweight = QuantizedWeight(shape=tuple(W.shape), segments=[segment], perm=perm)
    return GPTQResult(qweight, Q, losses)


@dataclass(frozen=True)
class ColumnGroups:
    """How the columns of a mixed-width layer are ordered, split into width classes and grouped.

    order: (columns,) the processing order (positions → original columns).
    classes: the widths present, widest first; each is stored as one `QuantizedSegment`.
    members: per class, the processing positions of its columns in increasing order (= stored order).
    group_of: (columns,) per processing position, the index of its grid in the flat list `groups`.
    groups: per grid, (class index, processing positions of its columns).
    """

    order: torch.Tensor
    classes: list[int]
    members: list[torch.Tensor]
    group_of: torch.Tensor
    groups: list[tuple[int, torch.Tensor]]


def column_groups(widths: torch.Tensor, order: torch.Tensor, group_size: int | None) -> ColumnGroups:
    """Split the columns (taken in `order`) into width classes, widest first, then into grids of
    `group_size` consecutive class members (None: one grid per row of each class)."""
    w = widths[order]  # width of each processing position
    classes = sorted({int(b) for b in w.tolist()}, reverse=True)
    members, groups = [], []
    group_of = torch.empty(len(order), dtype=torch.long)
    for c, b in enumerate(classes):
        pos = torch.nonzero(w == b).flatten()
        members.append(pos)
        g = group_size or len(pos)
        for s in range(0, len(pos), g):
            group_of[pos[s : s + g]] = len(groups)
            groups.append((c, pos[s : s + g]))
    return ColumnGroups(order, classes, members, group_of, groups)


def gptq_quantize_mixed(
    W: torch.Tensor,
    H: torch.Tensor,
    widths: torch.Tensor,
    *,
    group_size: int | None = None,
    act_order: bool = True,
    damp: float = 0.01,
    block_size: int = 128,
    grid: str = "minmax",
    importance: torch.Tensor | None = None,
    symmetric: bool = False,
    codebook: str | None = None,
) -> GPTQResult:
    """GPTQ with one width per input column (BAQ, BayesQ), columns of equal width stored together.

    widths: (columns,) integers in 1..8. Columns are processed in act-order (decreasing diag H) or in their
    natural order; each width class becomes one segment of the stored weight, its columns in processing
    order, split into grids of `group_size` columns (None: one grid per row of the class). A grid is fitted
    when the first of its columns is reached, from the current values of all its columns (the updates of
    every column quantized before included). grid: "minmax" (the reference's range) or "mse" (the range that
    minimises Σ importance·(w − Q(w))², `importance` (rows, columns) defaulting to diag H per column).
    codebook: a non-uniform codebook instead of the affine grid ("lloyd_max" or "quantile", fitted per row of
    each grid with the importances as weights; `grid` is then unused); each column's codes are its nearest levels.
    With one width, `group_size` equal to `block_size` (or None) and grid="minmax" this is `gptq_quantize`.
    """
    W = W.detach().clone().float()
    H = H.detach().clone().float()
    rows, columns = W.shape
    widths = torch.as_tensor(widths, dtype=torch.long).flatten()
    if widths.shape != (columns,) or int(widths.min()) < 1 or int(widths.max()) > 8:
        raise ValueError(f"widths: expected ({columns},) integers in 1..8, got {tuple(widths.shape)}")
    if grid not in ("minmax", "mse"):
        raise ValueError(f"grid={grid!r}: expected 'minmax' or 'mse'")
    if codebook is not None and codebook not in CODEBOOKS:
        raise ValueError(f"codebook={codebook!r}: expected one of {', '.join(CODEBOOKS)} (or None: uniform grids)")
    fit_codebook = QUANTIZERS.get(codebook) if codebook is not None else None
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if importance is None:
        importance = torch.diag(H)[None, :].expand(rows, columns)
    order = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else torch.arange(columns)
    W, H, imp = W[:, order], H[order][:, order], importance.float()[:, order]
    cg = column_groups(widths, order, group_size)
    pos_width = widths[order]

    Hinv = inverse_hessian_cholesky(H, damp)
    WT = W.t().contiguous()  # (columns, rows): see gptq_quantize
    codesT = torch.zeros_like(WT)
    QT = torch.zeros_like(WT)
    lossesT = torch.zeros_like(WT)
    g_scale = torch.zeros(len(cg.groups), rows)
    g_zero = torch.zeros(len(cg.groups), rows)
    g_levels: list[torch.Tensor] = [torch.empty(0)] * len(cg.groups)  # codebooks: (rows, 2ᵇ) ascending levels
    g_mid: list[torch.Tensor] = [torch.empty(0)] * len(cg.groups)  # and the decision thresholds between them
    first = torch.full((len(cg.groups),), columns, dtype=torch.long)
    for k, (_, pos) in enumerate(cg.groups):
        first[k] = pos.min()
    first_mask = torch.zeros(columns, dtype=torch.bool)
    first_mask[first] = True
    # plain lists: the loop below reads one entry per column
    first_of, group_of, pos_bits = first_mask.tolist(), cg.group_of.tolist(), pos_width.tolist()

    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = WT[i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            gi, bits = group_of[col], pos_bits[col]
            if first_of[col]:
                pos = cg.groups[gi][1]
                inside = pos < i2  # columns of this block hold their in-block updates in W1
                cur = torch.where(inside[:, None], W1[(pos - i1).clamp(0, i2 - i1 - 1)], WT[pos])  # (g, rows)
                if fit_codebook is not None:
                    levels = torch.sort(fit_codebook(cur.t().contiguous(), bits, weights=imp[:, pos]).params.float())[0]
                    g_levels[gi], g_mid[gi] = levels, (levels[:, 1:] + levels[:, :-1]) / 2
                else:
                    if grid == "mse":
                        p = fit_uniform(cur.t(), bits, symmetric=symmetric, method="mse", norm=2.0, grid=50,
                                        weights=imp[:, pos])  # fmt: skip
                    else:
                        p = fit_uniform(cur.t(), bits, symmetric=symmetric, method="minmax")
                    g_scale[gi], g_zero[gi] = p.scale[:, 0], p.zero[:, 0]
            w = W1[i]
            if fit_codebook is not None:  # the nearest level: count the thresholds below w
                c = (w[:, None] > g_mid[gi]).sum(1)
                q = g_levels[gi].gather(1, c[:, None]).squeeze(1)
            else:
                scale, zero = g_scale[gi], g_zero[gi]
                c = torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)
                q = scale * (c - zero)
            codesT[col] = c
            QT[col] = q
            err = (w - q) / Hinv1[i, i]
            Err1[i] = err
            W1[i:].addr_(Hinv1[i, i:], err, alpha=-1.0)
        lossesT[i1:i2] = Err1**2 / 2
        WT[i2:] -= Hinv[i1:i2, i2:].t() @ Err1

    segments, stored = [], []
    for c, b in enumerate(cg.classes):
        pos = cg.members[c]
        ks = [k for k, (cls, _) in enumerate(cg.groups) if cls == c]
        g = len(pos) if not group_size else min(group_size, len(pos))
        if len(ks) == 1:  # one grid per row: the class's column order is free, store it ascending (a segment map)
            pos = pos[torch.argsort(order[pos])]
        codes = codesT[pos].t().to(torch.uint8)
        if fit_codebook is not None:  # (rows, n_groups, 2ᵇ)
            segments.append(QuantizedSegment(b, codes, g, codebook=torch.stack([g_levels[k] for k in ks], dim=1)))
        else:
            segments.append(QuantizedSegment(b, codes, g, scale=g_scale[ks].t().contiguous(),
                                             zero=g_zero[ks].t().contiguous()))  # fmt: skip
        stored.append(order[pos])
    perm = torch.cat(stored)
    if torch.equal(perm, torch.arange(columns)):
        perm = None
    inv = torch.argsort(order)
    qweight = QuantizedWeight(shape=tuple(W.shape), segments=segments, perm=perm)
    return GPTQResult(qweight, QT.t()[:, inv], lossesT.t()[:, inv])
