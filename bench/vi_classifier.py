"""Mean-field VI on a reference classifier, initialised from the deterministic net: training time, then
accuracy / NLL / ECE of the deterministic net and of the Bayesian net with T samples on the test split.
Prints a markdown table, writes JSON and the posterior.

    .venv/bin/python bench/vi_classifier.py --model lenet5-mnist --epochs 5 --samples 16
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bayesquant.data.calibration import labelled_batches
from bayesquant.eval import evaluate
from bayesquant.models import load_model
from bayesquant.paths import atomic_file
from bayesquant.posterior import MeanFieldVI, informativeness_table

TEST = {"lenet5-mnist": "mnist:test", "mlp-2x100": "mnist:test", "resnet-fashion": "fashion-mnist:test"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5-mnist", choices=list(TEST))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--prior-std", type=float, default=0.1)
    parser.add_argument("--init-std", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON (default bench/out/vi-MODEL.json)")
    args = parser.parse_args()
    test = TEST[args.model]
    train = test.replace(":test", ":train")

    det = evaluate(args.model, test)
    loaded = load_model(args.model)
    batches = labelled_batches(loaded, train, nsamples=10**9, batch_size=args.batch_size, seed=args.seed, shuffle=True)
    start = time.perf_counter()
    vi = MeanFieldVI(loaded, "classification", prior_std=args.prior_std, init_std=args.init_std, lr=args.lr,
                     n_data=batches.n_total, seed=args.seed)  # fmt: skip
    vi.fit(batches, epochs=args.epochs)
    train_seconds = time.perf_counter() - start
    bayes = evaluate(loaded, test, samples=args.samples)
    out = Path(args.out or f"bench/out/vi-{args.model}.json")
    post_path = vi.posterior.save(out.with_suffix(".posterior.safetensors"))

    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [
        f"{args.model}: deterministic vs mean-field VI ({args.epochs} epochs on {train}, "
        f"prior std {args.prior_std}, lr {args.lr}; {machine})",
        "",
        "| model | samples T | accuracy | NLL | ECE | Brier | mutual information | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r, t in (("deterministic", det, "—"), ("VI", bayes, f"{train_seconds:.0f}")):
        lines.append(
            f"| {name} | {r['samples']} | {100 * r['accuracy']:.2f}% | {r['nll']:.4f} | {r['ece']:.4f} "
            f"| {r['brier']:.4f} | {r['mutual_information']:.4f} | {t} |"
        )
    print("\n".join(lines))
    print(informativeness_table(vi.posterior))
    with atomic_file(out, "w") as fh:
        json.dump({"machine": machine, "args": vars(args), "deterministic": det, "vi": bayes,
                   "train_seconds": train_seconds, "posterior": str(post_path),
                   "layers": vi.posterior.summary()}, fh, indent=2, default=str)  # fmt: skip


if __name__ == "__main__":
    main()
