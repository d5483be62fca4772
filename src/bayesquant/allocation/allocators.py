"""Bit allocators behind one interface: `allocate(table, budget, allocator=NAME)`.

Every allocator maps a `CostTable` (cost[g, k] at widths bits[k]), a budget and an allowed-width mask to one
width per group. Registered: `uniform`, `knapsack` (BayesQ), `baq` (closed-form equal-loss), `exact`
(dynamic programming: the optimality reference), `quantile_inform` (paper (c) §4.2) and `random_bits`
(paper (c) §4.3, in random_bits.py).

>>> alloc = allocate(table, Budget(3.5, "storable"), allocator="knapsack")  # doctest: +SKIP
>>> alloc.storable_bits, alloc.per_module()["model.layers.0.mlp.down_proj"][:4]  # doctest: +SKIP
(3.498, [3, 4, 3, 5])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bayesquant.allocation.table import Allocation, Budget, BudgetKind, CostTable, allowed_mask, check_budget
from bayesquant.errors import UserError
from bayesquant.registry import Registry

log = logging.getLogger(__name__)

# (table, units (G, B), allowed mask (G, B), total units, options) → choice (G,) long
AllocatorFn = Callable[..., torch.Tensor]
ALLOCATORS: Registry[AllocatorFn] = Registry("allocator", "--allocator")

_BIG = float("inf")


def _lowest(mask: torch.Tensor) -> torch.Tensor:
    """Index of each group's smallest allowed width (G,)."""
    return mask.long().argmax(1)


def _highest(mask: torch.Tensor) -> torch.Tensor:
    B = mask.shape[1]
    return B - 1 - mask.flip(1).long().argmax(1)


# ---------------------------------------------------------------- uniform
@ALLOCATORS.decorator("uniform")
def _uniform(table: CostTable, units: torch.Tensor, mask: torch.Tensor, total: float, **_: Any) -> torch.Tensor:
    """One width for every group: the widest whose total fits the budget (groups where it is not allowed take
    their nearest allowed width). A fractional budget generally lands below the target (warned)."""
    best = None
    for k in range(len(table.bits)):
        idx = torch.where(mask[:, k], torch.tensor(k), _nearest_allowed(mask, k))
        if float(units.gather(1, idx[:, None]).sum()) <= total + 1e-9 or best is None:
            best = idx
    return best


def _nearest_allowed(mask: torch.Tensor, k: int) -> torch.Tensor:
    pos = torch.arange(mask.shape[1])
    dist = (pos[None, :] - k).abs().double() + torch.where(mask, 0.0, _BIG)
    return dist.argmin(1)


# ---------------------------------------------------------------- knapsack (BayesQ)
def _hull_segments(cost: torch.Tensor, units: torch.Tensor, mask: torch.Tensor, start: torch.Tensor):
    """Upgrade steps along each group's lower convex hull from its start width.

    Returns (group, from, to, efficiency, Δunits) of every hull segment; efficiencies fall along each group's
    hull, so a greedy pass over all segments by decreasing efficiency upgrades each group in order.
    """
    G, B = cost.shape
    cur = start.clone()
    active = torch.ones(G, dtype=torch.bool)
    segs = []
    ar = torch.arange(G)
    for _ in range(B - 1):
        c0, u0 = cost[ar, cur], units[ar, cur]
        du = units - u0[:, None]  # (G, B)
        gain = c0[:, None] - cost  # cost reduction
        ok = mask & (du > 0) & (gain > 0) & active[:, None]
        eff = torch.where(ok, gain / du.clamp_min(1e-300), torch.tensor(-1.0, dtype=cost.dtype))
        # among equally efficient targets take the largest step (stay on the hull's far end)
        best = eff.max(1)
        has = best.values > 0
        if not has.any():
            break
        tie = ok & (eff >= best.values[:, None] * (1 - 1e-12))
        nxt = torch.where(tie, torch.arange(B)[None, :], -1).max(1).values
        g = ar[has]
        segs.append((g, cur[has], nxt[has], best.values[has], du[has, nxt[has]]))
        cur = torch.where(has, nxt, cur)
        active &= has
    if not segs:
        empty = torch.empty(0)
        return empty.long(), empty.long(), empty.long(), empty.double(), empty.double()
    return tuple(torch.cat(x) for x in zip(*segs, strict=True))


@ALLOCATORS.decorator("knapsack")
def _knapsack(
    table: CostTable, units: torch.Tensor, mask: torch.Tensor, total: float, *, refine: bool = True, **_: Any
) -> torch.Tensor:
    """BayesQ's greedy knapsack: start every group at its lowest width, then repeatedly take the upgrade with
    the largest expected-loss reduction per extra stored bit that still fits. Upgrades are taken along each
    group's lower convex hull (vectorised), and once the best upgrade no longer fits, smaller ones that do are
    still taken (each group's upgrades stay in order). Then `polish`: on coarse tables the greedy can stop far
    below the budget (few groups of very unequal size), so a local search (or, where the table is small enough,
    the dynamic-programming optimum) replaces it when better."""
    start = _lowest(mask)
    choice = start.clone()
    remaining = total - float(units.gather(1, start[:, None]).sum())
    if remaining < 0:
        return choice
    g, _frm, to, eff, du = _hull_segments(table.cost, units, mask, start)
    order = torch.argsort(-eff, stable=True)
    g, to, du = g[order], to[order], du[order]
    cum = torch.cumsum(du, 0)
    n_fit = int(torch.searchsorted(cum, torch.tensor(remaining, dtype=cum.dtype), right=True))
    # the fitting prefix, in order: the last segment of each group in it is where that group ends up
    # along a group's hull the targets grow, so the group's final width in the prefix is its largest target
    choice.scatter_reduce_(0, g[:n_fit], to[:n_fit], reduce="amax")
    remaining -= float(cum[n_fit - 1]) if n_fit else 0.0
    blocked = torch.zeros(len(choice), dtype=torch.bool)
    gl, tl, dl = g[n_fit:].tolist(), to[n_fit:].tolist(), du[n_fit:].tolist()
    min_du = min(dl) if dl else 0.0
    for gi, ti, di in zip(gl, tl, dl, strict=True):  # fill what is left with smaller upgrades that fit
        if remaining < min_du:
            break
        if blocked[gi]:
            continue
        if di <= remaining + 1e-9:
            choice[gi] = ti
            remaining -= di
        else:
            blocked[gi] = True  # a group's later upgrades depend on this one
    return polish(table.cost, units, mask, total, choice) if refine else choice


def polish(
    cost: torch.Tensor,
    units: torch.Tensor,
    mask: torch.Tensor,
    total: float,
    choice: torch.Tensor,
    max_groups: int = 256,
) -> torch.Tensor:
    """Local search after a greedy pass on coarse tables (few, unequal groups, e.g. whole layers), where the
    greedy can stop far below the budget: apply the best single-group change, or pair of changes (one group
    down, another up), that lowers the objective and still fits, until none is left. Skipped above
    `max_groups` groups, where the greedy is already within a group's width of the budget."""
    n_groups, B = cost.shape
    if n_groups * (total + 1) * B <= 2e7:  # small enough for the exact optimum: take it if it beats the greedy
        best = _dp(cost, torch.round(units).long(), mask, math.floor(total + 1e-9))
        if best is not None and float(units[torch.arange(n_groups), best].sum()) <= total + 1e-6:
            ar = torch.arange(n_groups)
            if float(cost[ar, best].sum()) < float(cost[ar, choice].sum()):
                return best
    if n_groups > max_groups:
        return choice
    G = n_groups
    choice = choice.clone()
    ar = torch.arange(G)
    for _ in range(10 * G):
        used = float(units[ar, choice].sum())
        dc = torch.where(mask, cost - cost[ar, choice][:, None], _BIG)  # (G, B) change in cost
        du = units - units[ar, choice][:, None]  # (G, B) change in units
        single = torch.where(du <= total - used + 1e-9, dc, _BIG)
        best1 = float(single.min())
        # pairs: group i moves to k, group j to l, i ≠ j
        pair = dc.reshape(G * B, 1) + dc.reshape(1, G * B)
        fits = (du.reshape(G * B, 1) + du.reshape(1, G * B)) <= total - used + 1e-9
        same = ar.repeat_interleave(B)[:, None] == ar.repeat_interleave(B)[None, :]
        pair = torch.where(fits & ~same, pair, _BIG)
        best2 = float(pair.min())
        if min(best1, best2) >= -1e-12:
            break
        if best1 <= best2:
            g, k = divmod(int(single.argmin()), B)
            choice[g] = k
        else:
            a, b = divmod(int(pair.argmin()), G * B)
            choice[a // B], choice[b // B] = a % B, b % B
    return choice


# ---------------------------------------------------------------- exact (reference)
@ALLOCATORS.decorator("exact")
def _exact(
    table: CostTable, units: torch.Tensor, mask: torch.Tensor, total: float, *, resolution: float = 1.0, **_: Any
) -> torch.Tensor:
    """The optimum by dynamic programming over the budget in steps of `resolution` bits (exact when every
    group's units are multiples of it). O(G · budget/resolution · B): a reference for tests and small models."""
    cap = math.floor(total / resolution + 1e-9)
    G, B = units.shape
    if G * (cap + 1) * B > 2e8:
        raise UserError(f"allocator 'exact': {G} groups × {cap} budget steps is too large; use 'knapsack' or 'baq'")
    choice = _dp(table.cost, torch.round(units / resolution).long(), mask, cap)
    if choice is None:
        log.warning("allocator 'exact': the budget is below the smallest allowed widths; using them")
        return _lowest(mask)
    return choice


def _dp(cost: torch.Tensor, u: torch.Tensor, mask: torch.Tensor, cap: int) -> torch.Tensor | None:
    """min Σ cost[g, k_g] s.t. Σ u[g, k_g] ≤ cap over integer units (None when nothing fits)."""
    u, cost, allowed = u.numpy(), cost.numpy(), mask.numpy()
    G, B = u.shape
    dp = np.zeros(cap + 1)  # dp[x]: least cost of the groups so far using at most x units
    back = np.zeros((G, cap + 1), dtype=np.int8)
    for gi in range(G):
        best = np.full(cap + 1, np.inf)
        arg = np.zeros(cap + 1, dtype=np.int8)
        for k in range(B):
            if not allowed[gi, k] or u[gi, k] > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[u[gi, k] :] = dp[: cap + 1 - u[gi, k]] + cost[gi, k]
            better = cand < best
            best[better], arg[better] = cand[better], k
        dp, back[gi] = best, arg
    if not np.isfinite(dp[cap]):
        return None
    choice = np.zeros(G, dtype=np.int64)
    x = cap
    for gi in range(G - 1, -1, -1):
        k = back[gi, x]
        choice[gi] = k
        x -= u[gi, k]
    return torch.from_numpy(choice)


# ---------------------------------------------------------------- BAQ
def _fit_theta(table: CostTable) -> float:
    """θ of L(b) = c·2^(−θb): the median over groups of the least-squares slope of −log2 cost against b."""
    c = table.cost.clamp_min(1e-300).log2()
    b = table.widths
    bc = b - b.mean()
    slope = -((c - c.mean(1, keepdim=True)) * bc).sum(1) / (bc * bc).sum()
    slope = slope[torch.isfinite(slope) & (slope > 0)]
    return float(slope.median()) if len(slope) else 2.0


@ALLOCATORS.decorator("baq")
def _baq(
    table: CostTable,
    units: torch.Tensor,
    mask: torch.Tensor,
    total: float,
    *,
    theta: float | None = None,
    rounds: int = 4,
    refine: bool = True,
    **_: Any,
) -> torch.Tensor:
    """BAQ's closed-form equal-loss allocation with self-correction.

    With L_g(b) = c_g·2^(−θb), minimising Σ_g L_g subject to Σ_g n_g·b_g = budget gives (Lagrange)
    c_g·θ·ln2·2^(−θ b_g) = λ·n_g, i.e. b_g = (1/θ)·log2(c_g/n_g) + const: every group ends with the same loss
    per weight ("equal loss"). The constant is set by bisection so the clipped widths meet the budget; the
    continuous widths are then floored onto the allowed set and the rest of the budget is spent by the
    knapsack rule on single upgrades. Self-correction: c_g is re-estimated at the allocated width,
    c_g = cost[g, b_g]·2^(θ b_g), and the allocation repeated (`rounds` times). `refine`: `polish` at the end.
    """
    theta = theta or _fit_theta(table)
    w = table.widths
    lo_b, hi_b = w[_lowest(mask)], w[_highest(mask)]
    n = table.sizes
    per_bit = (units / (n[:, None] * w[None, :])).mean(1)  # units per code bit (≈1; >1 with overhead)
    ref = torch.argmin((w[None, :] - total / float((n * per_bit).sum())).abs(), dim=1)  # start near the mean
    choice = ref
    for _ in range(max(rounds, 1)):
        c = table.cost.gather(1, choice[:, None])[:, 0].clamp_min(1e-300) * torch.pow(2.0, theta * w[choice])
        base = torch.log2(c / n) / theta  # (G,)

        def spent(level: float, base: torch.Tensor = base) -> float:
            return float((n * per_bit * (base + level).clamp(lo_b, hi_b)).sum())

        lo, hi = -200.0, 200.0
        for _ in range(100):  # bisection on the water level
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if spent(mid) <= total else (lo, mid)
        cont = (base + lo).clamp(lo_b, hi_b)
        choice = _round_down(cont, w, mask)
        choice = _fill_single_upgrades(table, units, mask, total, choice)
    return polish(table.cost, units, mask, total, choice) if refine else choice


def _round_down(cont: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The largest allowed width ≤ cont (else the smallest allowed)."""
    ok = mask & (w[None, :] <= cont[:, None] + 1e-9)
    idx = torch.where(ok, torch.arange(len(w))[None, :], -1).max(1).values
    return torch.where(idx >= 0, idx, _lowest(mask))


def _fill_single_upgrades(
    table: CostTable, units: torch.Tensor, mask: torch.Tensor, total: float, choice: torch.Tensor
) -> torch.Tensor:
    """Spend what is left of the budget on one-step upgrades, best cost reduction per unit first (each round
    offers every group its next allowed width; the fitting prefix is taken at once, the rest one by one)."""
    choice = choice.clone()
    remaining = total - float(units.gather(1, choice[:, None]).sum())
    G, B = mask.shape
    ar = torch.arange(G)
    cols = torch.arange(B)[None, :]
    for _ in range(B):
        nxt = torch.where(mask & (cols > choice[:, None]), cols, B).min(1).values
        has = nxt < B
        if remaining <= 0 or not has.any():
            break
        g = ar[has]
        to = nxt[has]
        du = units[g, to] - units[g, choice[g]]
        gain = table.cost[g, choice[g]] - table.cost[g, to]
        keep = (du > 0) & (gain > 0)
        g, to, du, gain = g[keep], to[keep], du[keep], gain[keep]
        if len(g) == 0:
            break
        order = torch.argsort(-(gain / du), stable=True)
        g, to, du = g[order], to[order], du[order]
        cum = torch.cumsum(du, 0)
        n_fit = int(torch.searchsorted(cum, torch.tensor(remaining, dtype=cum.dtype), right=True))
        choice[g[:n_fit]] = to[:n_fit]  # one upgrade per group in a round: no duplicate indices
        remaining -= float(cum[n_fit - 1]) if n_fit else 0.0
        moved = n_fit > 0
        for gi, ti, di in zip(g[n_fit:].tolist(), to[n_fit:].tolist(), du[n_fit:].tolist(), strict=True):
            if di <= remaining + 1e-9:
                choice[gi] = ti
                remaining -= di
                moved = True
        if not moved:
            break
    return choice


# ---------------------------------------------------------------- Quantile Inform (paper (c) §4.2)
def normalized_informativeness(info: torch.Tensor) -> torch.Tensor:
    """Min–max normalisation to [0, 1] followed by the square root (paper (c) §4.2, step 3)."""
    lo, hi = info.min(), info.max()
    z = (info - lo) / (hi - lo) if hi > lo else torch.ones_like(info)
    return z.sqrt()


@ALLOCATORS.decorator("quantile_inform")
def _quantile_inform(
    table: CostTable,
    units: torch.Tensor,
    mask: torch.Tensor,
    total: float,
    *,
    aggregation: str = "mean",
    **_: Any,
) -> torch.Tensor:
    """Widths from the per-group informativeness (eq. 2: mean |μ|/σ; eq. 15: 1 − H/log|l| over the normalised
    informativeness distribution): normalised to [0, 1], square-rooted, compared with B−1 evenly spaced
    thresholds s·i/B (i = 1..B−1) — a group's width index is the number of thresholds below it. The single
    scale s is found by bisection: the largest budget use that fits (a step function, so the budget is met
    to the nearest feasible point)."""
    if aggregation not in table.info:
        valid = ", ".join(sorted(table.info)) or "none: build the table from a posterior"
        raise UserError(f"quantile_inform aggregation={aggregation!r}: the cost table has no such informativeness "
                        f"(available: {valid})")  # fmt: skip
    z = normalized_informativeness(table.info[aggregation].double())
    B = len(table.bits)
    steps = torch.arange(1, B, dtype=torch.float64) / B  # (B−1,)

    def pick(s: float) -> torch.Tensor:
        k = (z[:, None] > s * steps[None, :]).sum(1)  # (G,) target index among all widths
        return torch.where(mask[torch.arange(len(k)), k], k, _nearest_allowed_rows(mask, k))

    def use(s: float) -> float:
        return float(units.gather(1, pick(s)[:, None]).sum())

    lo, hi = 0.0, 1e6  # s → 0: every group at the widest width; s large: the narrowest
    if use(hi) > total:
        return pick(hi)
    for _ in range(200):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e6 if hi > 1 else 0.5 * (lo + hi)
        lo, hi = (lo, mid) if use(mid) <= total else (mid, hi)
        if hi - lo < 1e-12 * max(hi, 1e-12):
            break
    return pick(hi)


def _nearest_allowed_rows(mask: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(mask.shape[1])
    dist = (pos[None, :] - k[:, None]).abs().double() + torch.where(mask, 0.0, _BIG)
    return dist.argmin(1)


# ---------------------------------------------------------------- the one entry point
def allocate(
    table: CostTable,
    budget: Budget | float,
    allocator: str = "knapsack",
    *,
    min_bits: int | None = None,
    max_bits: int | None = None,
    pinned: dict[str, int] | None = None,
    warn: bool = True,
    **options: Any,
) -> Allocation:
    """Widths for every group of `table` under `budget` (mean bits per weight, nominal or storable); `warn`:
    log when the budget is missed (off where a search tries budgets of its own)."""
    import bayesquant.allocation.random_bits  # noqa: F401  (registers "random_bits")

    budget = budget if isinstance(budget, Budget) else Budget(float(budget))
    fn = ALLOCATORS.get(allocator)
    mask = allowed_mask(table, min_bits, max_bits, pinned)
    units = table.units(budget.kind)
    total = table.total_budget(budget)
    choice = fn(table, units, mask, total, **options)
    alloc = Allocation(choice.long(), table, allocator, budget)
    if allocator == "random_bits" and hasattr(fn, "last_extra"):
        alloc.extra |= fn.last_extra
    if warn:
        check_budget(alloc, total)
    return alloc


__all__ = ["ALLOCATORS", "Budget", "BudgetKind", "allocate", "normalized_informativeness"]
