"""Merging width classes after a column allocation, so each class pays for its grids.

A layer quantized with per-column widths stores one grid (scale and zero, or a codebook) per row for every
width class it uses, and a column map whose size grows with the number of classes. A per-column cost table can
only prorate one grid per row over a layer's columns, so the knapsack sees a new class as free: it opens classes
of a handful of columns (a single 8-bit column of a 384-column layer costs 8 + 32 bits per row, not 8 + 32/384).
`merge_classes` repairs that after the fact, with the exact size of each layer (`layer_bits`): it moves every
column of one class to the neighbouring class below or above whenever

    Δcost + η·Δbits < 0,

Δcost the change of the table's cost summed over the class's columns, Δbits ≤ 0 the change of the layer's
stored bits (codes, grids and column map, exactly), and η the allocation's price of a bit — the largest cost
reduction per stored bit among the upgrades the allocation did not take (what a freed bit buys back). Merging
down frees a class's grids and its extra code bits at a cost increase; merging a class of a few columns up
removes its grids for fewer code bits and lowers the cost. Only moves that free bits are taken (the best of a
layer, until none pays), so the step never exceeds the budget; the budget search (`allocate_storable`) then
spends what was freed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bayesquant.allocation.allocators import allocate
from bayesquant.allocation.table import Allocation, Budget, BudgetKind, CostTable, allowed_mask

TOLERANCE = 0.002  # bits per weight: a storable budget counts as met up to this excess


def bit_price(alloc: Allocation, mask: torch.Tensor | None = None) -> float:
    """η: the largest cost reduction per extra stored bit among the upgrades not taken (0 when none is left)."""
    table = alloc.table
    units = table.units(BudgetKind.STORABLE)
    ar = torch.arange(table.n_groups)
    c0, u0 = table.cost[ar, alloc.choice], units[ar, alloc.choice]
    du = units - u0[:, None]
    gain = c0[:, None] - table.cost
    ok = (du > 0) & (gain > 0) & (mask if mask is not None else True)
    eff = torch.where(ok, gain / du.clamp_min(1e-300), torch.zeros((), dtype=table.cost.dtype))
    return float(eff.max()) if eff.numel() else 0.0


def merge_classes(
    alloc: Allocation,
    layer_bits: Callable[[str, torch.Tensor], float],
    mask: torch.Tensor | None = None,
    price: float | None = None,
) -> Allocation:
    """`alloc` (column granularity) with width classes merged where their grids cost more than they gain (see the
    module docstring). `layer_bits(name, widths)` gives a layer's stored bits for per-column widths; `mask`
    (G, B) the widths each column may take (a merge into a disallowed width is not considered)."""
    table = alloc.table
    if table.granularity != "column":
        raise ValueError(f"merge_classes: needs a column allocation, got granularity {table.granularity!r}")
    eta = bit_price(alloc, mask) if price is None else price
    widths = table.widths.long()
    position = {int(b): k for k, b in enumerate(widths.tolist())}
    choice = alloc.choice.clone()
    merges = 0
    for name, a, b in _runs(table.modules):
        cols = slice(a, b)
        cost = table.cost[cols]
        allowed = mask[cols] if mask is not None else torch.ones_like(cost, dtype=torch.bool)
        w = widths[choice[cols]]
        current = layer_bits(name, w)
        while True:
            classes = sorted(set(w.tolist()))
            if len(classes) < 2:
                break
            best: tuple[float, torch.Tensor | None, float] = (0.0, None, 0.0)
            for i, c in enumerate(classes):
                members = w == c
                for nb in (classes[i - 1] if i else None, classes[i + 1] if i + 1 < len(classes) else None):
                    if nb is None or not bool(allowed[members, position[nb]].all()):
                        continue
                    d_cost = float(cost[members, position[nb]].sum() - cost[members, position[c]].sum())
                    moved = torch.where(members, nb, w)
                    bits = layer_bits(name, moved)
                    if bits > current:
                        continue  # only moves that free bits: the budget loop spends them
                    score = d_cost + eta * (bits - current)
                    if score < best[0]:
                        best = (score, moved, bits)
            if best[1] is None:
                break
            w, current = best[1], best[2]
            merges += 1
        choice[cols] = torch.tensor([position[int(b)] for b in w.tolist()], dtype=choice.dtype)
    merged = Allocation(choice, table, alloc.allocator, alloc.budget, dict(alloc.extra))
    merged.extra |= {"merged_classes": merges, "bit_price": eta}
    return merged


def _runs(modules: list[str]) -> list[tuple[str, int, int]]:
    """Consecutive runs of equal module names as (name, first group, end) (a table's groups come module by
    module)."""
    runs: list[tuple[str, int, int]] = []
    for g, name in enumerate(modules):
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1], g + 1)
        else:
            runs.append((name, g, g + 1))
    return runs


def fill_classes(
    alloc: Allocation,
    layer_bits: Callable[[str, torch.Tensor], float],
    spare: float,
    mask: torch.Tensor | None = None,
) -> Allocation:
    """Spend `spare` stored bits on column upgrades, largest cost reduction per code bit first, each priced
    exactly by `layer_bits`: first into width classes a layer already has (no grid added), then, with what is
    still left, into any allowed width (its first column pays the new class's grids). Merging makes the stored
    size jump with the allocator's target, so the budget search can stop well below the budget on a small model;
    this takes up the rest."""
    table = alloc.table
    widths = table.widths.long()
    choice = alloc.choice.clone()
    allowed = mask if mask is not None else torch.ones_like(table.cost, dtype=torch.bool)
    runs = _runs(table.modules)
    current = {r: layer_bits(name, widths[choice[a:b]]) for r, (name, a, b) in enumerate(runs)}
    filled = 0
    width_list = widths.tolist()
    for open_classes in (False, True):
        cands = []  # (efficiency, group, target width index, run)
        for r, (_name, a, b) in enumerate(runs):
            present = set(widths[choice[a:b]].tolist())
            for g in range(a, b):
                cur = width_list[int(choice[g])]
                for k, w in enumerate(width_list):
                    if w > cur and allowed[g, k] and (open_classes or w in present):
                        gain = float(table.cost[g, choice[g]] - table.cost[g, k])
                        if gain > 0:
                            cands.append((gain / (float(table.sizes[g]) * (w - cur)), g, k, r))
        cands.sort(key=lambda c: -c[0])
        for _eff, g, k, r in cands:
            if spare < float(table.sizes.min()):
                break
            if k <= int(choice[g]):
                continue
            name, a, b = runs[r]
            trial = choice[a:b].clone()
            trial[g - a] = k
            bits = layer_bits(name, widths[trial])
            if bits - current[r] <= spare:
                spare -= bits - current[r]
                current[r] = bits
                choice[g] = k
                filled += 1
    out = Allocation(choice, table, alloc.allocator, alloc.budget, dict(alloc.extra))
    out.extra["filled_columns"] = filled
    return out


def allocate_storable(
    table: CostTable,
    bits: float,
    layer_bits: Callable[[str, torch.Tensor], float],
    n_weights: int,
    allocator: str = "knapsack",
    *,
    min_bits: int | None = None,
    max_bits: int | None = None,
    **options,
) -> Allocation:
    """The allocation of a storable budget of `bits` per weight over `table`, met as the saved model counts it:
    `layer_bits(name, widths)` gives a module's exact stored bits (partial grids of every width class and the
    column map included), `n_weights` the weights the table covers. With column groups each allocation's width
    classes are merged where their grids cost more than they gain (`merge_classes`). The table's own estimate
    misses those costs, so the budget handed to the allocator is moved until the model fits — first by the
    measured excess (down, or up where merges freed bits; doubled after a step that changed nothing, since a
    layer whose classes merge into one keeps its size until the target falls below the narrower class), then by
    bisection to the largest budget that fits (a codebook's size depends on its width, so the excess is not a
    constant offset) — and what is left below the budget goes to single upgrades (`fill_classes`). `options` go
    to the allocator. The returned allocation's `extra["storable_bits_exact"]` is its measured size; when even the
    narrowest widths do not fit it misses the budget (the size says by how much): the caller reports it."""
    mask = allowed_mask(table, min_bits, max_bits)
    column = table.granularity == "column"

    def measured(alloc: Allocation) -> tuple[Allocation, float]:  # with its exact size, and its excess
        by_module = alloc.per_module()
        stored = sum(layer_bits(name, torch.tensor(w)) for name, w in by_module.items()) / n_weights
        alloc.extra["storable_bits_exact"] = stored
        return alloc, stored - bits

    def allocation(target: float) -> tuple[Allocation, float]:
        alloc = allocate(table, Budget(target, BudgetKind.STORABLE), allocator, min_bits=min_bits, max_bits=max_bits,
                         warn=False, **options)  # fmt: skip
        return measured(merge_classes(alloc, layer_bits, mask) if column else alloc)

    fits, lo, hi, target = None, None, None, bits
    scale, last = 1.0, None
    for _ in range(12):  # bracket the budget: step by the excess until one target fits and a larger one does not
        alloc, excess = allocation(target)
        if excess == last:  # the step changed nothing (merging undid it): double the next
            scale *= 2
        last = excess
        if excess <= TOLERANCE:
            if fits is None or target > fits[0]:
                fits = (target, alloc, excess)
            if excess > -TOLERANCE:
                return alloc
            lo = target
            if hi is not None:
                break
            target += max(-excess, 0.01) * scale  # under the budget (merged classes freed bits): step up
        else:
            hi = target
            if lo is not None:
                break
            target = max(target - max(excess, 0.01) * scale, 1e-3)
    if fits is None:
        return alloc  # the narrowest widths allowed do not fit: the budget is missed (reported in the size)
    if hi is not None:  # bisect between the largest budget that fits and the smallest that does not
        lo = fits[0]
        for _ in range(10):
            if fits[2] > -TOLERANCE or hi - lo < 1e-3:
                break
            mid = (lo + hi) / 2
            alloc, excess = allocation(mid)
            if excess <= TOLERANCE:
                lo, fits = mid, (mid, alloc, excess)
            else:
                hi = mid
    alloc, excess = fits[1], fits[2]
    if column and excess < -TOLERANCE:  # merges make the size jump: spend what is left over
        alloc, _ = measured(fill_classes(alloc, layer_bits, -excess * n_weights, mask))
    return alloc
