"""Allocator speed on a large synthetic table (10⁵ column groups × 6 widths by default): wall time of every
registered allocator, median of a few runs. Prints a markdown table and writes JSON.

    .venv/bin/python bench/allocation_speed.py [--groups 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from bayesquant.allocation import ALLOCATORS, Budget, CostTable, allocate
from bayesquant.paths import atomic_file

BITS = (2, 3, 4, 5, 6, 8)


def table(groups: int, seed: int = 0) -> CostTable:
    """Column groups of 576 weights with log-normal sensitivities, costs c·2^(−2b)·(1 + noise): non-convex."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.exp(2 * torch.randn(groups, generator=gen, dtype=torch.float64))
    noise = 1 + 0.2 * torch.rand(groups, len(BITS), generator=gen, dtype=torch.float64)
    cost = c[:, None] * torch.pow(2.0, -2 * torch.tensor(BITS, dtype=torch.float64)) * noise
    cost = cost.flip(1).cummax(1).values.flip(1)  # keep it non-increasing in b
    sizes = torch.full((groups,), 576.0)
    info = {"mean": c.sqrt(), "entropy": torch.rand(groups, generator=gen, dtype=torch.float64)}
    return CostTable(cost, sizes, BITS, overhead=torch.full((groups, len(BITS)), 32.0), info=info)


def main() -> None:
    import bayesquant.allocation.random_bits  # noqa: F401  (registers random_bits)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=3.5)
    parser.add_argument("--out", default="bench/out/allocation-speed.json")
    args = parser.parse_args()
    t = table(args.groups)
    rows = []
    for name in ALLOCATORS.names():
        if name == "exact":  # dynamic programming over 2·10⁸ budget steps: not meant for this size
            continue
        times, alloc = [], None
        for _ in range(args.repeats if name != "random_bits" else 1):
            start = time.perf_counter()
            alloc = allocate(t, Budget(args.budget, "storable"), name)
            times.append(time.perf_counter() - start)
        rows.append({"allocator": name, "seconds": statistics.median(times), "storable_bits": alloc.storable_bits,
                     "objective": alloc.objective})  # fmt: skip
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [f"{args.groups} groups × {len(BITS)} widths, storable budget {args.budget} ({machine})", "",
             "| allocator | seconds (median) | storable bits | objective |", "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['allocator']} | {r['seconds']:.3f} | {r['storable_bits']:.3f} | {r['objective']:.4g} |")
    print("\n".join(lines))
    with atomic_file(Path(args.out), "w") as fh:
        json.dump({"machine": machine, "args": vars(args), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
