"""Paper (c) Table 1 at CPU scale: a Bayesian LeNet-5 on MNIST (mean-field VI from `lenet5-mnist`), its
posterior means quantized layer by layer at mean ≈ 3.2 and ≈ 4 bits by QIU, QINU, Random Bits, uniform
4-bit, knapsack and BAQ; accuracy, NLL and ECE on the MNIST test split, mean ± std over VI seeds.
Prints a markdown table and writes JSON.

    .venv/bin/python bench/allocation_lenet.py --seeds 0 1 2 [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bayesquant.allocation import Budget, allocate
from bayesquant.allocation.costs import posterior_cost_table
from bayesquant.allocation.plan import Plan
from bayesquant.api import quantize
from bayesquant.config import QuantizeConfig
from bayesquant.data.calibration import labelled_batches
from bayesquant.eval import evaluate
from bayesquant.models import load_model
from bayesquant.paths import atomic_file
from bayesquant.posterior import MeanFieldVI, Posterior

# name → (allocator, allocator options, cost metric, codebook); "uniform-4" is plain 4-bit RTN
METHODS = {
    "QIU": ("quantile_inform", {"aggregation": "mean"}, "informativeness", "uniform"),
    "QINU": ("quantile_inform", {"aggregation": "mean"}, "informativeness", "quantile"),
    "RB": ("random_bits", {}, "informativeness", "uniform"),
    "knapsack": ("knapsack", {}, "expected_mse", "uniform"),
    "baq": ("baq", {}, "expected_mse", "uniform"),
}


def posterior_for(seed: int, epochs: int, out_dir: Path) -> Posterior:
    path = out_dir / f"lenet5-vi-seed{seed}.posterior.safetensors"
    if path.is_file():
        return Posterior.load(path)
    loaded = load_model("lenet5-mnist")
    batches = labelled_batches(loaded, "mnist:train", nsamples=10**9, batch_size=128, seed=seed, shuffle=True)
    vi = MeanFieldVI(loaded, "classification", n_data=batches.n_total, seed=seed).fit(batches, epochs=epochs)
    vi.posterior.save(path)
    return vi.posterior


def _with_mean(post: Posterior):
    loaded = load_model("lenet5-mnist")
    modules = loaded.family.quantizable_modules(loaded.module)
    post.check_model(modules)
    with torch.no_grad():
        for name, m in modules.items():
            m.weight.copy_(post.mean[name])
    return loaded


def float_mean(post: Posterior) -> dict:
    """The deterministic net with weights μ, unquantized (the paper's M_det)."""
    metrics = evaluate(_with_mean(post), "mnist:test")
    return {k: metrics[k] for k in ("accuracy", "nll", "ece")} | {"nominal_bits": 32.0, "storable_bits": 32.0}


def quantize_mean(post: Posterior, plan: Path | None, bits: int, quantizer: str) -> dict:
    """The deterministic net with weights μ, quantized by RTN (per output channel) under the plan."""
    loaded = _with_mean(post)
    cfg = QuantizeConfig(method="rtn", bits=bits, quantizer=quantizer, plan=None if plan is None else str(plan))
    result = quantize(loaded, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        from bayesquant.io import size_report

        size = size_report(result.save(Path(tmp) / "q"))
    metrics = evaluate(result.model, "mnist:test")
    return {k: metrics[k] for k in ("accuracy", "nll", "ece")} | {
        "nominal_bits": size["nominal_bits"],
        "storable_bits": size["storable_bits"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--budgets", type=float, nargs="+", default=[3.2, 4.0])
    parser.add_argument("--out", default="bench/out/allocation-lenet.json")
    args = parser.parse_args()
    out_dir = Path(args.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for seed in args.seeds:
        start = time.perf_counter()
        post = posterior_for(seed, args.epochs, out_dir)
        print(f"seed {seed}: posterior ready ({time.perf_counter() - start:.0f} s)", flush=True)
        rows.append({"seed": seed, "method": "float μ", "budget": 32.0, **float_mean(post)})
        rows.append({"seed": seed, "method": "uniform-4", "budget": 4.0, **quantize_mean(post, None, 4, "uniform")})
        for budget in args.budgets:
            for name, (allocator, options, metric, quantizer) in METHODS.items():
                table = posterior_cost_table(post, granularity="layer", metric=metric, quantizer=quantizer)
                alloc = allocate(table, Budget(budget), allocator, **options)
                with tempfile.TemporaryDirectory() as tmp:
                    plan = Plan.from_allocation(alloc).save(Path(tmp) / "plan.json")
                    r = quantize_mean(post, plan, 4, quantizer)
                rows.append({"seed": seed, "method": name, "budget": budget, "widths": alloc.bits.tolist(), **r})
                print(f"  {name} @ {budget}: {alloc.bits.tolist()} → {100 * r['accuracy']:.2f}%", flush=True)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["budget"]), []).append(r)

    def ms(values: list[float], scale: float = 1.0, fmt: str = ".2f") -> str:
        m = statistics.mean(values) * scale
        s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
        return f"{m:{fmt}} ± {s:{fmt}}"

    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [
        f"Bayesian LeNet-5 (VI, {args.epochs} epochs) on MNIST, seeds {args.seeds} ({machine})",
        "",
        "| method | budget | mean bits (nominal) | storable bits | accuracy % | NLL | ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    for (method, budget), rs in groups.items():
        lines.append(
            f"| {method} | {budget:g} | {ms([r['nominal_bits'] for r in rs], fmt='.3f')} "
            f"| {ms([r['storable_bits'] for r in rs], fmt='.3f')} | {ms([r['accuracy'] for r in rs], 100)} "
            f"| {ms([r['nll'] for r in rs], fmt='.4f')} | {ms([r['ece'] for r in rs], fmt='.4f')} |"
        )
    print("\n".join(lines))
    with atomic_file(Path(args.out), "w") as fh:
        json.dump({"machine": machine, "args": vars(args), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
