"""Two classifiers on the same labelled test set: accuracy, NLL and ECE of each, and the paired-bootstrap interval
of each difference A − B (the same resampled examples for both), so a gap of a few test examples can be told
apart from the test set's noise. A and B are zoo keys or directories written by `bayesquant quantize --out`.
With `--reference KEY` (e.g. the float model) also their fidelity to it: top-1 agreement and KL(reference ‖ model).
Prints a markdown table and writes JSON.

    .venv/bin/python bench/paired.py --a out/dc-bayesq3 --b out/dc-gptq3 --data mnist:test --reference digit-cnn
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bayesquant.data import load_dataset
from bayesquant.eval import metrics as M
from bayesquant.eval import predict_probs
from bayesquant.models import load_model
from bayesquant.nn.layers import set_dequant_cache
from bayesquant.paths import atomic_file

METRICS = {"accuracy": M.accuracy, "nll": M.nll, "ece": M.ece}
FIDELITY = {"agreement": M.agreement, "kl": lambda probs, ref: M.kl_divergence(ref, probs)}  # against --reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="model A: zoo key or saved directory")
    parser.add_argument("--b", required=True, help="model B: zoo key or saved directory")
    parser.add_argument("--data", required=True, help="labelled SPEC, e.g. mnist:test")
    parser.add_argument("--reference", help="zoo key or directory: also agreement with it and KL(reference ‖ A, B)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON (default: bench/out/paired.json)")
    args = parser.parse_args()

    data = load_dataset(args.data)
    if data.labels is None:
        parser.error(f"--data {args.data}: has no labels; the comparison needs a labelled split")
    probs = {}
    for name in (args.a, args.b, *([args.reference] if args.reference else [])):
        loaded = load_model(name)
        set_dequant_cache(loaded.module, True)
        probs[name] = predict_probs(loaded, data)[0]
    a, b, labels = probs[args.a], probs[args.b], data.labels
    targets = {m: labels for m in METRICS} | ({m: probs[args.reference] for m in FIDELITY} if args.reference else {})
    rows = {}
    for metric, fn in (METRICS | FIDELITY).items():
        if metric in targets:
            t = targets[metric]
            r = M.paired_bootstrap(fn, a, b, t, resamples=args.resamples, seed=args.seed)
            rows[metric] = {"a": fn(a, t), "b": fn(b, t)} | r
    disagree = int((a.argmax(-1) != b.argmax(-1)).sum())
    print(f"A = {args.a}, B = {args.b} on {args.data} ({len(labels)} examples, {disagree} predicted differently; "
          f"95% paired-bootstrap intervals, {args.resamples} resamples"
          + (f"; agreement and KL against {args.reference}" if args.reference else "") + ")\n")  # fmt: skip
    print("| metric | A | B | A − B | 95% interval | A lower in |")
    print("|---|---|---|---|---|---|")
    for metric, r in rows.items():
        interval = f"[{r['low']:+.4f}, {r['high']:+.4f}]"
        print(f"| {metric} | {r['a']:.4f} | {r['b']:.4f} | {r['difference']:+.4f} | {interval} "
              f"| {100 * r['fraction_below_zero']:.1f}% |")  # fmt: skip
    out = Path(args.out or "bench/out/paired.json")
    with atomic_file(out, "w") as fh:
        json.dump({"args": vars(args), "n": len(labels), "predicted_differently": disagree, "metrics": rows}, fh,
                  indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
