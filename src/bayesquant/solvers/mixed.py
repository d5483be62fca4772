"""BAQ inside GPTQ: per-column widths from the equal-loss allocation, with self-correction.

For one layer (Zhang et al., BAQ): a GPTQ pass at the reference width b₀ gives each input column j its loss
L_j = Σ_r (w_rj − q_rj)² / (2·[H⁻¹]_jj²) (GPTQ's own error measure of the layer output). Modelling
L_j(b) = L_j(b_j)·2^(−θ(b − b_j)) (θ = 2: a uniform grid's MSE falls 4× per bit), the widths that minimise
Σ_j L_j(b) at a fixed mean width make the loss per weight equal across columns (`allocation.allocators._baq`).
The layer is re-quantized with those widths by `gptq_quantize_mixed`; the losses it measures replace the
model's estimate (self-correction) and the allocation is repeated `rounds` times. Each column's reference loss
L_j(b₀) is the geometric mean of its estimates so far (each round's measurement carried back to b₀ by the
model): one measurement alone makes the allocation oscillate, since a column that received more bits then
looks cheap. The result with the lowest measured loss among the rounds that meet the budget is kept; a layer
too small to meet a storable budget at all (a 9-column first convolution: one grid per row costs 3.6 bits per
weight) is quantized at the budget's width, rounded, and says so in the trace (`met_budget`): a few hundred
weights over budget cost the model less than a 1-bit first layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bayesquant.allocation.allocators import allocate
from bayesquant.allocation.classes import allocate_storable
from bayesquant.allocation.table import Budget, BudgetKind, CostTable
from bayesquant.solvers.gptq import GPTQResult, gptq_quantize_mixed

GRID_BITS = 32.0  # a float16 scale and zero per grid
THETA = 2.0


@dataclass
class BAQTrace:
    """What BAQ did on one layer: each round's mean width and measured loss, and the kept round."""

    bits: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    kept: int = -1
    met_budget: bool = True
    spent: list[float] = field(default_factory=list)  # bits per weight each round spends, as the budget counts


def grid_bits(bits: int, codebook: bool = False) -> float:
    """Stored bits of one row's grid: a float16 scale and zero, or a codebook's 2ᵇ float16 levels."""
    return 16.0 * (1 << bits) if codebook else GRID_BITS


def mixed_stored_bits(
    widths: torch.Tensor, rows: int, group_size: int | None, codebook: bool = False, act_order: bool = True
) -> float:
    """Stored bits of a layer quantized by `gptq_quantize_mixed` with these per-column widths: codes, a float16
    scale and zero (or codebook) per (row, grid) — each width class split into ⌈n_c/g⌉ grids, a partial one
    included — and the column permutation where one is stored (`stores_permutation`): a segment map of
    ⌈log2 K⌉ bits per column for K width classes when each class keeps its columns in ascending order (no
    act-order, or one grid per row of every class), else int16/int32 indices."""
    from bayesquant.nn.layers import perm_dtype, segment_map_bits
    from bayesquant.nn.packing import packed_nbytes

    columns = len(widths)
    counts = torch.bincount(widths.long(), minlength=9)
    classes = [(b, int(n)) for b, n in enumerate(counts) if n]
    n_grids = [math.ceil(n / (group_size or n)) for _, n in classes]
    grids = sum(k * grid_bits(b, codebook) for k, (b, _) in zip(n_grids, classes, strict=True))
    perm_bits = 0
    if stores_permutation(widths, group_size, act_order):
        if not act_order or max(n_grids) == 1:
            perm_bits = 8 * packed_nbytes(columns, segment_map_bits(len(n_grids)))
        else:
            perm_bits = torch.iinfo(perm_dtype(columns)).bits * columns
    return rows * float(widths.sum()) + rows * grids + perm_bits


def stores_permutation(widths: torch.Tensor, group_size: int | None, act_order: bool = True) -> bool:
    """Whether `gptq_quantize_mixed` stores a column permutation: not for one width with one grid per row
    (column order is then free), nor without act-order when the widths already fall from left to right."""
    columns = len(widths)
    if bool(torch.all(widths == widths[0])) and (not group_size or group_size >= columns):
        return False
    return act_order or not bool(torch.all(widths[:-1] >= widths[1:]))


def _loss_table(
    loss: torch.Tensor, widths: torch.Tensor, rows: int, candidates: tuple[int, ...], theta: float
) -> CostTable:
    """BAQ's model of one layer as a column cost table: cost[j, b] = L_j·2^(−θ(b − b_j)), L_j measured at b_j."""
    w = torch.tensor(candidates, dtype=torch.float64)
    c = loss.double().clamp_min(1e-30)[:, None] * torch.pow(2.0, -theta * (w[None, :] - widths.double()[:, None]))
    columns = len(loss)
    return CostTable(c, torch.full((columns,), float(rows)), candidates, modules=["layer"] * columns,
                     granularity="column")  # fmt: skip


def equal_loss_widths(
    loss: torch.Tensor,
    widths: torch.Tensor,
    rows: int,
    budget: Budget,
    *,
    candidates: tuple[int, ...] = (2, 3, 4, 5, 6, 8),
    theta: float = THETA,
    min_bits: int | None = None,
    max_bits: int | None = None,
) -> torch.Tensor:
    """Per-column widths (columns,) for column losses `loss` measured at `widths`, under `budget` (mean bits per
    weight of the layer, counted in code bits; `storable_widths` handles storable budgets)."""
    table = _loss_table(loss, widths, rows, candidates, theta)
    alloc = allocate(table, budget, "baq", min_bits=min_bits, max_bits=max_bits, theta=theta)
    return alloc.bits


def storable_widths(
    loss: torch.Tensor,
    widths: torch.Tensor,
    rows: int,
    budget: Budget,
    group_size: int | None,
    codebook: bool = False,
    act_order: bool = True,
    *,
    candidates: tuple[int, ...] = (2, 3, 4, 5, 6, 8),
    theta: float = THETA,
    min_bits: int | None = None,
    max_bits: int | None = None,
) -> torch.Tensor:
    """`equal_loss_widths` under a budget counted exactly as `mixed_stored_bits` counts it. A storable budget is
    searched for like BayesQ's (`allocation.classes.allocate_storable`): width classes whose grids cost more
    than BAQ's loss model says they gain are merged into a neighbour, and the bits freed go to the columns that
    gain most."""
    if budget.kind == BudgetKind.NOMINAL:
        return equal_loss_widths(loss, widths, rows, budget, candidates=candidates, theta=theta, min_bits=min_bits,
                                 max_bits=max_bits)  # fmt: skip
    table = _loss_table(loss, widths, rows, candidates, theta)

    def layer_bits(_name: str, w: torch.Tensor) -> float:
        return mixed_stored_bits(w, rows, group_size, codebook, act_order)

    alloc = allocate_storable(table, budget.bits, layer_bits, rows * len(loss), "baq", min_bits=min_bits,
                              max_bits=max_bits, theta=theta)  # fmt: skip
    return alloc.bits


def storable_shares(
    shapes: list[tuple[int, int]], bits: float, group_size: int | None, codebook: bool, classes: int = 2
) -> list[float]:
    """The storable budget of each (rows, columns) layer for a model budget of `bits` per weight: every layer the
    same code bits per weight, plus the storage of `classes` width classes of its own — their grids (a float16
    scale and zero, or a codebook, per row and group of `group_size` columns, a partial group per extra class)
    and the column map (int16 indices with a group size, else a segment map). Two classes by default: a mean
    width between two integers needs two, and where the second class does not pay for its grids
    (`storable_widths` merges it) the layer spends them on one class's codes instead. The shares add up to the
    model's budget exactly. BAQ shares a budget equally across layers (the paper); a flat storable budget per
    layer would leave a 16-column shortcut convolution, whose per-row grids alone cost 2 bits per weight, at
    1 bit."""
    ref = max(round(bits), 1)
    col_bits = 0 if classes < 2 else 16 if group_size else math.ceil(math.log2(classes))  # the column map
    over = [
        rows * (math.ceil(cols / (group_size or cols)) + classes - 1) * grid_bits(ref, codebook) + col_bits * cols
        for rows, cols in shapes
    ]  # fmt: skip
    sizes = [rows * cols for rows, cols in shapes]
    code = bits - sum(over) / sum(sizes)
    return [code + o / n for o, n in zip(over, sizes, strict=True)]


def baq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    budget: Budget,
    *,
    group_size: int | None = None,
    rounds: int = 1,
    candidates: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8),
    min_bits: int | None = None,
    max_bits: int | None = None,
    theta: float = THETA,
    **gptq_options,
) -> tuple[GPTQResult, torch.Tensor, BAQTrace]:
    """BAQ on one layer: (the kept GPTQ result, its per-column widths, the trace of the rounds)."""
    rows, columns = W.shape
    cb, act = gptq_options.get("codebook") is not None, gptq_options.get("act_order", True)
    nominal = budget.bits
    if budget.kind == BudgetKind.STORABLE:
        nominal -= grid_bits(round(budget.bits), cb) / (group_size or columns)
    lo, hi = max(min_bits or 1, candidates[0]), min(max_bits or 8, candidates[-1])
    ref = min(max(round(nominal), lo), hi)
    widths = torch.full((columns,), ref, dtype=torch.long)
    trace = BAQTrace()
    best: tuple[float, GPTQResult, torch.Tensor] | None = None
    log_ref = torch.zeros(columns, dtype=torch.float64)  # Σ over rounds of log2 L_j carried back to b₀
    for r in range(max(rounds, 1) + 1):
        if r:
            ref_loss = torch.pow(2.0, log_ref / r)  # the geometric mean of the estimates of L_j(b₀)
            widths = storable_widths(
                ref_loss, torch.full_like(widths, ref), rows, budget, group_size, cb, act, candidates=candidates,
                theta=theta, min_bits=min_bits, max_bits=max_bits,
            )  # fmt: skip
        result = gptq_quantize_mixed(W, H, widths, group_size=group_size, **gptq_options)
        col = result.losses.sum(0).double().clamp_min(1e-30)
        log_ref += torch.log2(col) + theta * (widths.double() - ref)
        loss = float(result.losses.sum())
        mean = float(widths.double().mean())
        spent = mixed_stored_bits(widths, rows, group_size, cb, act) / W.numel()
        spent = mean if budget.kind == BudgetKind.NOMINAL else spent
        trace.bits.append(mean)
        trace.loss.append(loss)
        trace.spent.append(spent)
        meets = spent <= budget.bits + 0.01
        if meets and (best is None or loss < best[0]):
            best = (loss, result, widths)
            trace.kept = r

    def one_width(b: int) -> tuple[GPTQResult, torch.Tensor, float]:
        widths = torch.full((columns,), b, dtype=torch.long)
        result = gptq_quantize_mixed(W, H, widths, group_size=group_size, **gptq_options)
        trace.bits.append(float(b))
        trace.loss.append(float(result.losses.sum()))
        trace.spent.append(mixed_stored_bits(widths, rows, group_size, cb, act) / W.numel())
        return result, widths, trace.loss[-1]

    if best is None:  # the grids alone exceed the budget: one width, the budget's, rounded, on every column
        result, widths, _ = one_width(min(max(round(budget.bits), lo), hi))
        trace.kept, trace.met_budget = len(trace.loss) - 1, False
        return result, widths, trace
    return best[1], best[2], trace
