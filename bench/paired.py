"""Two classifiers on the same labelled test set: accuracy, NLL and ECE of each, and the paired-bootstrap interval
of each difference A − B (the same resampled examples for both), so a gap of a few test examples can be told
apart from the test set's noise. A and B are zoo keys or directories written by `bayesquant quantize --out`.
With `--reference KEY` (e.g. the float model) also their fidelity to it: top-1 agreement and KL(reference ‖ model).
Also the exact McNemar test of equal accuracy, and the examples the two predict differently (with the reference's
prediction and its margin: top-1 minus top-2 probability). Prints markdown tables and writes JSON.

    .venv/bin/python bench/paired.py --a out/dc-bayesq3 --b out/dc-gptq3 --data mnist:test --reference digit-cnn
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
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
    parser.add_argument("--a", help="model A: zoo key or saved directory")
    parser.add_argument("--b", help="model B: zoo key or saved directory")
    parser.add_argument("--data", help="labelled SPEC, e.g. mnist:test")
    parser.add_argument("--reference", help="zoo key or directory: also agreement with it and KL(reference ‖ A, B)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=20, help="print at most this many differing examples")
    parser.add_argument("--out", help="JSON (default: bench/out/paired.json)")
    parser.add_argument("--tables", nargs="+", metavar="JSON", help="summarize finished comparisons (e.g. one per "
                        "calibration seed) instead: per file the examples each model alone gets right, and those "
                        "that recur")  # fmt: skip
    args = parser.parse_args()
    if args.tables:
        summarize([json.loads(Path(f).read_text()) | {"file": f} for f in args.tables])
        return
    if not (args.a and args.b and args.data):
        parser.error("--a, --b and --data are required (or --tables JSON ... to summarize finished comparisons)")

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
    mcnemar = M.mcnemar_exact(a, b, labels)
    discordant = discordant_examples(a, b, labels, probs[args.reference] if args.reference else None)
    disagree = len(discordant)
    print(f"A = {args.a}, B = {args.b} on {args.data} ({len(labels)} examples, {disagree} predicted differently; "
          f"95% paired-bootstrap intervals, {args.resamples} resamples"
          + (f"; agreement and KL against {args.reference}" if args.reference else "") + ")\n")  # fmt: skip
    print("| metric | A | B | A − B | 95% interval | A lower in |")
    print("|---|---|---|---|---|---|")
    for metric, r in rows.items():
        interval = f"[{r['low']:+.4f}, {r['high']:+.4f}]"
        print(f"| {metric} | {r['a']:.4f} | {r['b']:.4f} | {r['difference']:+.4f} | {interval} "
              f"| {100 * r['fraction_below_zero']:.1f}% |")  # fmt: skip
    print(f"\nExact McNemar test: A alone right on {mcnemar['a_only']}, B alone on {mcnemar['b_only']}, "
          f"two-sided p = {mcnemar['p_value']:.3g}")  # fmt: skip
    if args.reference:
        for who in ("a", "b"):  # the examples one model alone gets right: does it fix the reference's mistakes?
            alone, fixes = alone_right(discordant, who)
            print(f"{who.upper()} alone right on {len(alone)}: the reference gets {fixes} of them wrong")
        print()
    if discordant and args.show > 0:
        ref = " | reference | reference margin" if args.reference else ""
        print(f"| example | label | A | B{ref} |\n|---|---|---|---|" + ("---|---|" if args.reference else ""))
        for d in discordant[: args.show]:
            cells = [d["index"], d["label"], d["a"], d["b"]]
            cells += [d["reference"], f"{d['reference_margin']:.3f}"] if args.reference else []
            print("| " + " | ".join(map(str, cells)) + " |")
        if len(discordant) > args.show:
            print(f"({len(discordant) - args.show} more in the JSON)")
    out = Path(args.out or "bench/out/paired.json")
    result = {"args": vars(args), "n": len(labels), "predicted_differently": disagree, "metrics": rows}
    with atomic_file(out, "w") as fh:
        json.dump(result | {"mcnemar": mcnemar, "discordant": discordant}, fh, indent=2)


def summarize(runs: list[dict]) -> None:
    """One row per comparison: accuracies, the examples only A or only B gets right (how many of them the
    reference gets wrong), McNemar's p; then the examples that one model alone gets right in several files."""
    print("| file | accuracy A | accuracy B | A alone right (reference wrong) | B alone right (reference wrong) "
          "| McNemar p |\n|---|---|---|---|---|---|")  # fmt: skip
    recur = {"a": Counter(), "b": Counter()}
    for run in runs:
        acc, cells = run["metrics"]["accuracy"], []
        for who in ("a", "b"):
            alone, fixes = alone_right(run["discordant"], who)
            recur[who].update(d["index"] for d in alone)
            cells.append(f"{len(alone)} ({fixes})" if run["args"].get("reference") else f"{len(alone)}")
        print(f"| {run['file']} | {100 * acc['a']:.2f} | {100 * acc['b']:.2f} | {cells[0]} | {cells[1]} "
              f"| {run['mcnemar']['p_value']:.3g} |")  # fmt: skip
    for who in ("a", "b"):
        total = sum(recur[who].values())
        again = {i: n for i, n in recur[who].most_common() if n > 1}
        print(f"\n{who.upper()} alone right {total} times on {len(recur[who])} distinct examples; in more than one "
              f"file: {again or 'none'}")  # fmt: skip


def alone_right(discordant: list[dict], who: str) -> tuple[list[dict], int]:
    """The differing examples model `who` ("a" or "b") gets right, and how many of them the reference gets wrong
    (0 without a reference)."""
    alone = [d for d in discordant if d[who] == d["label"]]
    return alone, sum(d.get("reference", d["label"]) != d["label"] for d in alone)


def discordant_examples(a, b, labels, ref=None) -> list[dict]:
    """The examples A and B predict differently: index, label, both predictions and, with a reference model,
    its prediction and margin (top-1 minus top-2 probability: how close it was to changing its mind)."""
    pa, pb = a.argmax(-1), b.argmax(-1)
    rows = []
    for i in (pa != pb).nonzero().flatten().tolist():
        row = {"index": i, "label": int(labels[i]), "a": int(pa[i]), "b": int(pb[i])}
        if ref is not None:
            top2 = ref[i].topk(2).values
            row |= {"reference": int(ref[i].argmax()), "reference_margin": float(top2[0] - top2[1])}
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
