"""What rounding the embedding tables alone costs: the float model with only its tables quantized (as
`--embedding-bits` rounds them; a tied output layer reads the rounded table, which is then rounded by GPTQ for that
layer on `--nsamples` calibration windows of bbc-news:train), at several widths, evaluated on a test SPEC. Prints a
markdown table and writes JSON.

    .venv/bin/python bench/embeddings.py --model minilm-bbc --widths 8 6 5 4 3 2 2:32
    .venv/bin/python bench/embeddings.py --model smollm2-135m --max-windows 40 --nsamples 16 --widths 8 5 4 4:64

A width is BITS or BITS:GROUP (GROUP entries of a row per grid; default one grid per row).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from bayesquant.api import quantize_embeddings
from bayesquant.config import QuantizeConfig
from bayesquant.data.calibration import calibration_batches
from bayesquant.eval import evaluate
from bayesquant.io import size_report
from bayesquant.models import load_model
from bayesquant.paths import atomic_file
from bayesquant.solvers.embedding import embedding_targets

DEFAULT_DATA = {"smollm2-135m": "bbc-news:test", "minilm-bbc": "bbc-news:test"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="zoo KEY or a Hugging Face directory")
    parser.add_argument("--data", help="evaluation SPEC (default: bbc-news:test)")
    parser.add_argument("--widths", nargs="+", default=["8", "6", "5", "4", "3"], help="BITS or BITS:GROUP")
    parser.add_argument("--max-windows", type=int, help="language models: evaluate the first N windows")
    parser.add_argument("--nsamples", type=int, help="calibration windows for a tied table (default: the model's)")
    parser.add_argument("--out", help="JSON output (default bench/out/embeddings-MODEL.json)")
    args = parser.parse_args()
    data = args.data or DEFAULT_DATA.get(args.model, "bbc-news:test")
    base = load_model(args.model)
    tables = embedding_targets(base.module)
    n_table = sum(t.module.weight.numel() for t in tables.values())
    for name, t in tables.items():
        print(f"table {name} {tuple(t.module.weight.shape)}" + (f", tied to {', '.join(t.tied)}" if t.tied else ""))
    batches = None
    if any(t.tied for t in tables.values()):  # rounded for the output layer: its input Hessian on calibration data
        batches = calibration_batches(base, None, args.nsamples, 512, 0)
    metric = "perplexity" if base.task.value == "causal_lm" else "accuracy"
    rows = []
    path = Path(args.out or f"bench/out/embeddings-{Path(args.model).name}.json")
    for width in ["float", *args.widths]:
        model, seconds, table_mb = base, 0.0, 4 * n_table / 1e6
        if width != "float":
            bits, _, group = width.partition(":")
            config = QuantizeConfig(
                method="rtn", embedding_bits=int(bits), embedding_group_size=int(group) if group else None
            )
            model = copy.deepcopy(base)
            t = time.perf_counter()
            quantize_embeddings(model.module, embedding_targets(model.module), config, batches)
            seconds = time.perf_counter() - t
            table_mb = size_report(model)["embeddings"]["bytes"] / 1e6
        r = evaluate(model, data, max_windows=args.max_windows)
        rows.append({"width": width, metric: r[metric], "nll": r.get("nll"), "ece": r.get("ece"),
                     "table_mb": table_mb, "round_seconds": seconds})  # fmt: skip
        print(rows[-1], flush=True)
        with atomic_file(path, "w") as fh:
            json.dump({"model": args.model, "data": data, "max_windows": args.max_windows, "rows": rows}, fh, indent=2)
    head = f"| {args.model} tables | table MB | {metric} |" + (" NLL | ECE |" if metric == "accuracy" else "")
    print("\n" + head + " round s |\n" + "|---" * (head.count("|") - 1 + 1) + "|")
    for r in rows:
        value = f"{r[metric]:.3f}" if metric == "perplexity" else f"{100 * r[metric]:.2f}%"
        extra = f" {r['nll']:.4f} | {r['ece']:.4f} |" if metric == "accuracy" else ""
        print(f"| {r['width']} | {r['table_mb']:.1f} | {value} |{extra} {r['round_seconds']:.1f} |")


if __name__ == "__main__":
    main()
