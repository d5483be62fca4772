"""Full-precision baselines of every zoo model on its test split: the numbers every quantized model is
compared against. Prints a markdown table and writes JSON.

    .venv/bin/python bench/fp32_baselines.py [--models KEY ...] [--max-windows N] [--out bench/out/fp32.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bayesquant.eval import evaluate
from bayesquant.paths import atomic_file

CASES = {
    "smollm2-135m": "bbc-news:test",
    "digit-cnn": "mnist:test",
    "lenet5-mnist": "mnist:test",
    "mlp-2x100": "mnist:test",
    "resnet-fashion": "fashion-mnist:test",
    "minilm-bbc": "bbc-news:test",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--out", default="bench/out/fp32.json")
    args = parser.parse_args()

    rows = []
    for key in args.models:
        start = time.perf_counter()
        r = evaluate(key, CASES[key], max_windows=args.max_windows)
        r["wall_seconds"] = time.perf_counter() - start  # includes loading the model and the data
        rows.append(r)
        print(f"{key}: done in {r['wall_seconds']:.0f} s", flush=True)

    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [
        f"fp32 baselines ({machine})",
        "",
        "| model | data | metric | value | NLL | ECE | eval seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "perplexity" in r:
            metric, value, ece = f"perplexity ({r['n_windows']} windows)", f"{r['perplexity']:.2f}", "—"
        else:
            metric, value, ece = f"accuracy (n={r['n']})", f"{100 * r['accuracy']:.2f}%", f"{r['ece']:.4f}"
        lines.append(
            f"| {r['model']} | {r['data']} | {metric} | {value} | {r['nll']:.4f} | {ece} | {r['seconds']:.1f} |"
        )
    print("\n".join(lines))
    with atomic_file(Path(args.out), "w") as fh:
        json.dump({"machine": machine, "results": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
