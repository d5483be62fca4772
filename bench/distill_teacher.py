"""How good a distillation teacher is the posterior predictive? Accuracy and NLL of the teacher (mean softmax
over S draws of a diagonal-Laplace posterior, linearized or sampled, σ² scaled by the temperature τ) on the
calibration images and on the first test images, for a range of τ. τ = 0 is the float model. Prints a markdown
table and writes JSON.

    .venv/bin/python bench/distill_teacher.py --model digit-cnn [--taus 0 0.01 0.1 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bayesquant.api import estimate_posterior
from bayesquant.data import load_dataset
from bayesquant.data.calibration import _images, labelled_batches
from bayesquant.models import load_model
from bayesquant.paths import atomic_file
from bayesquant.solvers.distill import posterior_teacher

TEST = {"digit-cnn": "mnist:test", "lenet5-mnist": "mnist:test", "resnet-fashion": "fashion-mnist:test"}


def _score(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    nll = float(-probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean())
    return nll, float((probs.argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=sorted(TEST))
    parser.add_argument("--taus", type=float, nargs="+", default=[0, 0.001, 0.01, 0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--predictive", default="linearized", help="linearized | sampled")
    parser.add_argument("--samples", type=int, default=8, help="posterior draws per teacher")
    parser.add_argument("--nsamples", type=int, default=1024, help="calibration images (posterior and teacher)")
    parser.add_argument("--test", type=int, default=2000, help="first N test images")
    parser.add_argument("--out", default=None, help="JSON path (default bench/out/distill-teacher-MODEL.json)")
    args = parser.parse_args()

    loaded = load_model(args.model)
    model = loaded.module.eval()
    post = estimate_posterior(loaded, "laplace-diag", nsamples=args.nsamples, curvature="ggn")
    modules = loaded.family.quantizable_modules(model)
    calib = labelled_batches(loaded, None, args.nsamples, seed=0)
    sets = {"calibration": ([((*b[:-1],), {}) for b in calib.batches], torch.cat([b[-1] for b in calib.batches]))}
    test = load_dataset(TEST[args.model])
    x = _images(loaded, test.images[: args.test])
    sets["test"] = ([((x[i : i + 250],), {}) for i in range(0, len(x), 250)], test.labels[: args.test])
    rows = []
    for tau in args.taus:
        row: dict = {"tau": tau}
        for name, (batches, labels) in sets.items():
            teacher = posterior_teacher(model, batches, post, modules, samples=args.samples,
                                        predictive=args.predictive, temperature=tau, progress=False)  # fmt: skip
            row[f"{name}_nll"], row[f"{name}_accuracy"] = _score(torch.cat(teacher.probs), labels)
        rows.append(row)
        print(f"τ={tau}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "tau"), flush=True)
    print("\n| τ | calibration NLL | calibration acc. | test NLL | test acc. |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tau']:g} | {r['calibration_nll']:.4f} | {100 * r['calibration_accuracy']:.2f}% | "
              f"{r['test_nll']:.4f} | {100 * r['test_accuracy']:.2f}% |")  # fmt: skip
    out = Path(args.out or f"bench/out/distill-teacher-{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "w") as fh:
        fh.write(json.dumps({"model": args.model, "args": vars(args), "posterior": post.meta, "rows": rows},
                                  indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
