"""Allocators against the exact optimum, budgets, limits; parametrised over the registry."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from bayesquant.allocation import ALLOCATORS, Budget, CostTable, allocate
from bayesquant.errors import UserError

BITS = (2, 3, 4, 5, 6, 8)


def convex_table(G: int = 40, seed: int = 0) -> CostTable:
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(4, 33, (G,), generator=gen).double()
    c = sizes * torch.exp(3 * torch.rand(G, generator=gen, dtype=torch.float64))  # spread sensitivities
    cost = c[:, None] * torch.pow(2.0, -2 * torch.tensor(BITS, dtype=torch.float64))[None, :]
    info = {"mean": c / sizes, "entropy": torch.rand(G, generator=gen, dtype=torch.float64)}
    return CostTable(cost, sizes, BITS, modules=[f"layer{i}" for i in range(G)], info=info)


def monotone_table(G: int = 30, seed: int = 0) -> CostTable:
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(4, 33, (G,), generator=gen).double()
    steps = torch.rand(G, len(BITS), generator=gen, dtype=torch.float64) * sizes[:, None]
    cost = steps.flip(1).cumsum(1).flip(1)  # decreasing in b, arbitrary (non-convex) decrements
    return CostTable(cost, sizes, BITS, info={"mean": torch.rand(G, generator=gen, dtype=torch.float64)})


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [2.5, 3.2, 4.0, 5.5])
@pytest.mark.parametrize("name", ["knapsack", "baq"])
def test_convex_tables_reach_the_optimum_within_one_percent(name, target, seed):
    table = convex_table(seed=seed)
    best = allocate(table, target, "exact")
    got = allocate(table, target, name, refine=False)  # the closed form / greedy alone, without polishing
    assert got.nominal_bits <= target + 1e-9
    assert got.objective <= 1.01 * best.objective, (got.objective, best.objective)
    assert allocate(table, target, name).objective <= got.objective + 1e-12


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [2.7, 3.5, 4.5])
def test_knapsack_on_random_monotone_tables_within_two_percent(target, seed):
    table = monotone_table(seed=seed)
    best = allocate(table, target, "exact")
    got = allocate(table, target, "knapsack", refine=False)
    assert got.nominal_bits <= target + 1e-9
    assert got.objective <= 1.02 * best.objective, (got.objective, best.objective)


def test_refinement_reaches_the_optimum_on_coarse_tables():
    """A few layers of very unequal size: the greedy stops far below the budget, the polished result does not."""
    sizes = torch.tensor([150.0, 2400.0, 48000.0, 10080.0, 840.0])
    c = torch.tensor([500.0, 130.0, 25.0, 37.0, 120.0])
    cost = c[:, None] * torch.pow(2.0, -2.3 * torch.tensor(BITS, dtype=torch.float64))[None, :]
    table = CostTable(cost, sizes, BITS)
    best = allocate(table, 3.2, "exact")
    for name in ("knapsack", "baq"):
        got = allocate(table, 3.2, name)
        assert got.objective == pytest.approx(best.objective) and got.nominal_bits == pytest.approx(3.2, abs=0.01)


def test_exact_is_optimal_by_brute_force():
    import itertools

    table = convex_table(G=4, seed=3)
    best = allocate(table, 3.3, "exact")
    units = table.units(Budget(3.3).kind)
    brute = min(
        float(table.cost[range(4), list(ks)].sum())
        for ks in itertools.product(range(len(BITS)), repeat=4)
        if float(units[range(4), list(ks)].sum()) <= table.total_budget(Budget(3.3)) + 1e-9
    )
    assert best.objective == pytest.approx(brute)


@pytest.mark.parametrize("name", [*ALLOCATORS.names(), "random_bits"])
def test_every_allocator_meets_its_budget(name, caplog):
    if name not in ALLOCATORS:
        import bayesquant.allocation.random_bits  # noqa: F401
    table = convex_table(G=60, seed=1)
    for target in (3.0, 4.0):  # widths in the candidate set: every allocator can meet them exactly
        with caplog.at_level(logging.WARNING):
            alloc = allocate(table, target, name)
        assert alloc.nominal_bits <= target + 0.01
        if abs(alloc.nominal_bits - target) > 0.01:  # allowed only with a warning naming the point reached
            assert "not met exactly" in caplog.text
    alloc = allocate(table, 3.37, name)
    assert alloc.nominal_bits <= 3.37 + 0.01
    if name in ("knapsack", "baq", "exact"):
        assert alloc.nominal_bits == pytest.approx(3.37, abs=0.01)


def test_storable_budget_counts_overhead():
    table = convex_table(G=50, seed=2)
    table.overhead = (32.0 * torch.ones(50, len(BITS))).double()  # one fp16 scale + zero per group
    alloc = allocate(table, Budget(4.0, "storable"), "knapsack")
    assert alloc.storable_bits == pytest.approx(4.0, abs=0.01)
    assert alloc.nominal_bits < alloc.storable_bits - 1.0  # the overhead is 32/size ≥ 1 bit per weight here


def test_limits_and_pins_are_respected():
    table = convex_table(G=30, seed=4)
    alloc = allocate(table, 4.0, "knapsack", min_bits=3, max_bits=6, pinned={"layer0": 8, "layer1*": 6})
    bits = alloc.bits
    assert int(bits[0]) == 8 and bool((bits[10:20] >= 6).all())  # layer1, layer10..19 match "layer1*"
    assert bool((bits >= 3).all()) and bool((bits[2:10] <= 6).all()) and bool((bits[20:] <= 6).all())
    with pytest.raises(UserError, match="no module matches"):
        allocate(table, 4.0, "knapsack", pinned={"conv9": 8})
    with pytest.raises(UserError, match="no allowed width"):
        allocate(table, 4.0, "knapsack", min_bits=7, max_bits=7)
    with pytest.raises(UserError, match="unknown allocator"):
        allocate(table, 4.0, "simulated-annealing")
    with pytest.raises(UserError, match="positive"):
        allocate(table, -1.0, "knapsack")


def test_more_budget_never_costs_more():
    table = monotone_table(seed=9)
    for name in ("knapsack", "baq", "exact", "quantile_inform"):
        objs = [allocate(table, b, name).objective for b in (2.5, 3.0, 3.5, 4.0, 5.0, 6.0)]
        assert all(a >= b - 1e-9 for a, b in itertools.pairwise(objs)), (name, objs)


def test_quantile_inform_gives_more_bits_to_more_informative_groups():
    table = convex_table(G=40, seed=5)
    alloc = allocate(table, 4.0, "quantile_inform", aggregation="entropy")
    order = torch.argsort(table.info["entropy"])
    bits = alloc.bits[order]
    assert bool((bits[1:] >= bits[:-1]).all())  # monotone in the informativeness
    with pytest.raises(UserError, match="aggregation"):
        allocate(table, 4.0, "quantile_inform", aggregation="median")


def test_random_bits_tracks_the_target_mean():
    table = convex_table(G=20, seed=6)
    alloc = allocate(table, 4.0, "random_bits")
    assert 3.8 <= alloc.nominal_bits <= 4.0 + 1e-9
    # it prefers bits where the error is large: the most sensitive half gets at least the mean width
    c = table.cost[:, 0] / table.sizes
    hi = c > c.median()
    assert alloc.bits[hi].double().mean() >= alloc.bits[~hi].double().mean()


# ---------------------------------------------------------------- width classes pay for their grids
def _column_table(cols: int, rows: int, seed: int, modules: int = 2) -> CostTable:
    """A column table of `modules` layers of `rows` × `cols`, per-row grids prorated over the columns."""
    gen = torch.Generator().manual_seed(seed)
    G = modules * cols
    c = rows * torch.exp(4 * torch.rand(G, generator=gen, dtype=torch.float64))  # very unequal sensitivities
    cost = c[:, None] * torch.pow(2.0, -2 * torch.tensor(BITS, dtype=torch.float64))[None, :]
    overhead = torch.full((G, len(BITS)), 32.0 * rows / cols, dtype=torch.float64)
    names = [f"m{k}" for k in range(modules) for _ in range(cols)]
    return CostTable(cost, torch.full((G,), float(rows)), BITS, overhead, names, torch.arange(cols).repeat(modules),
                     granularity="column")  # fmt: skip


def _layer_bits(rows: int):
    from bayesquant.solvers.mixed import mixed_stored_bits

    return lambda name, widths: mixed_stored_bits(widths, rows, None, False, True)


def test_a_lone_wide_column_is_merged_into_its_neighbour_class():
    from bayesquant.allocation.classes import merge_classes

    rows, cols = 16, 64
    cost = torch.zeros(cols, 2, dtype=torch.float64)
    cost[:, 0] = 1.0  # every column gains 1 from 3 → 4 bits ...
    cost[0, 0] = 2.0  # ... column 0 gains 2: the knapsack gives it alone the wider width
    table = CostTable(cost, torch.full((cols,), float(rows)), (3, 4), modules=["m"] * cols,
                      index=torch.arange(cols), granularity="column")  # fmt: skip
    alloc = allocate(table, Budget(3.0 + 1.0 / cols), "knapsack")
    assert alloc.bits.tolist() == [4] + [3] * (cols - 1)
    # its own grids and code bit (16 rows × (32 + 1) bits) are worth more than its gain of 2 at 0.01 per bit:
    # merged down (merging the other 63 columns up would cost bits: not considered)
    merged = merge_classes(alloc, _layer_bits(rows), price=0.01)
    assert merged.bits.tolist() == [3] * cols and merged.extra["merged_classes"] == 1
    # at a price of 10⁻⁴ per bit the gain of 2 outweighs the 528 bits it frees: kept
    assert merge_classes(alloc, _layer_bits(rows), price=1e-4).bits.tolist() == alloc.bits.tolist()


@pytest.mark.parametrize("seed", range(3))
def test_merging_classes_lowers_the_priced_objective_and_keeps_the_limits(seed):
    from bayesquant.allocation.classes import bit_price, merge_classes
    from bayesquant.allocation.table import allowed_mask

    rows, cols = 24, 48
    table = _column_table(cols, rows, seed)
    mask = allowed_mask(table, min_bits=3, max_bits=6)
    alloc = allocate(table, Budget(4.4, "storable"), "knapsack", min_bits=3, max_bits=6)
    layer_bits = _layer_bits(rows)
    eta = bit_price(alloc, mask)
    assert eta > 0

    def priced(a):
        bits = sum(layer_bits(n, torch.tensor(w)) for n, w in a.per_module().items())
        return a.objective + eta * bits, bits

    merged = merge_classes(alloc, layer_bits, mask)
    before, after = priced(alloc), priced(merged)
    assert merged.extra["merged_classes"] > 0  # the knapsack opened classes of a few columns
    assert after[0] < before[0]
    assert after[1] <= before[1]  # only bits freed
    for name, widths in merged.per_module().items():
        assert len(set(widths)) <= len(set(alloc.per_module()[name]))
        assert min(widths) >= 3 and max(widths) <= 6
    with pytest.raises(ValueError, match="column"):
        merge_classes(allocate(convex_table(), Budget(3.0), "knapsack"), layer_bits)


def test_filling_spends_spare_bits_only_inside_existing_classes():
    from bayesquant.allocation.classes import fill_classes

    rows, cols = 8, 40
    table = _column_table(cols, rows, seed=5, modules=2)
    alloc = allocate(table, Budget(3.0), "knapsack", min_bits=2, max_bits=8)
    layer_bits = _layer_bits(rows)

    def stored(a):
        return sum(layer_bits(n, torch.tensor(w)) for n, w in a.per_module().items())

    classes = {n: set(w) for n, w in alloc.per_module().items()}
    spare = 20.5 * rows  # room for 20 one-bit upgrades of a column
    filled = fill_classes(alloc, layer_bits, spare)
    assert 0 < stored(filled) - stored(alloc) <= spare
    assert filled.extra["filled_columns"] > 0 and filled.objective < alloc.objective
    for name, widths in filled.per_module().items():
        assert set(widths) <= classes[name]  # no class opened, so no grid added
    assert bool((filled.bits >= alloc.bits).all())  # only upgrades
    assert fill_classes(alloc, layer_bits, rows - 1).bits.tolist() == alloc.bits.tolist()  # not one bit per row
