"""Mean-field VI on a reference classifier, initialised from the deterministic net: training time, then
accuracy / NLL / ECE of the deterministic net and of the Bayesian net with T samples on the test split.
With --val N the last N training images (seeded order) are held out, the posterior is scored on them after
every epoch and the epoch with the lowest validation ECE is kept (early stopping; the test split is only
used for the final numbers). That selection is only unbiased when the deterministic net never saw the
held-out images: the reference nets of the zoo are trained on the whole training split, so for them --val
scores on images the initial weights were fitted to — unless --retrain, which first retrains the deterministic
net with the zoo's own recipe on the kept images only (and reports that net as the deterministic row), so
the held-out images are unseen by both. Prints a markdown table and a paired bootstrap of the VI − deterministic
ECE and NLL over the test images (is the difference larger than the test set's noise?), writes JSON and the
posterior.

    .venv/bin/python bench/vi_classifier.py --model lenet5-mnist --epochs 5 --samples 16 --val 10000
    .venv/bin/python bench/vi_classifier.py --model lenet5-mnist --epochs 5 --samples 16 --val 10000 --retrain
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from bayesquant.data import load_dataset
from bayesquant.data.calibration import Batches
from bayesquant.eval import classifier_metrics, predict_probs
from bayesquant.eval import metrics as M
from bayesquant.models import load_model
from bayesquant.paths import atomic_file
from bayesquant.posterior import MeanFieldVI, Posterior, bayesian_from_posterior, informativeness_table

TEST = {"lenet5-mnist": "mnist:test", "mlp-2x100": "mnist:test", "resnet-fashion": "fashion-mnist:test"}


def test_metrics(loaded, data, samples: int) -> tuple[torch.Tensor, dict]:
    """The test set's per-sample probabilities (T, N, C) and the metrics of `evaluate` from them (one pass)."""
    start = time.perf_counter()
    sp = predict_probs(loaded, data, samples)
    metrics = {"model": loaded.key, "data": f"{data.name}:{data.split}"} | classifier_metrics(sp, data.labels)
    return sp, metrics | {"seconds": time.perf_counter() - start}


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
    parser.add_argument("--val", type=int, default=0, help="hold out N training images to pick the epoch")
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="with --val: retrain the deterministic net on the kept images first (zoo recipe)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples of the test set")
    parser.add_argument("--out", default=None, help="JSON (default bench/out/vi-MODEL.json)")
    args = parser.parse_args()
    test = TEST[args.model]
    train = test.replace(":test", ":train")

    if args.retrain and not args.val:
        parser.error("--retrain needs --val N (the images the retrained net must not see)")
    loaded = load_model(args.model)
    data = load_dataset(train)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))
    fit_idx, val_idx = order[: len(data) - args.val], order[len(data) - args.val :]
    retrain_seconds = None
    if args.retrain:  # the deterministic net, retrained with the zoo's recipe on the kept images only
        from bayesquant.data.images import ImageData
        from bayesquant.models.train import train_image_classifier
        from bayesquant.models.zoo import _image_recipes

        factory, _, recipe = _image_recipes()[args.model]
        torch.manual_seed(recipe.seed)
        module = factory()
        kept = ImageData(data.name, "train-kept", data.images[fit_idx], data.labels[fit_idx], data.classes)
        retrain_seconds = train_image_classifier(module, kept, recipe)["seconds"]
        loaded.module = module.eval()
        retrained = copy.deepcopy(module)  # VI turns loaded.module's layers Bayesian in place

        def fresh_model():
            m = load_model(args.model)
            m.module = copy.deepcopy(retrained)
            return m
    else:

        def fresh_model():
            return load_model(args.model)

    test_data = load_dataset(test)
    det_sp, det = test_metrics(loaded, test_data, 1)
    x, y = data.images[fit_idx], data.labels[fit_idx]
    bs = args.batch_size
    batches = Batches([(x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)], shuffle=True, seed=args.seed)
    history: list[dict] = []
    best: dict = {}

    def score(epoch: int) -> None:  # validation ECE after each epoch; keep the best posterior
        xv, yv = data.images[val_idx], data.labels[val_idx]
        probs = torch.cat([vi.predict(xv[i : i + 1000], samples=args.samples) for i in range(0, len(yv), 1000)])
        row = {"epoch": epoch + 1, "val_accuracy": M.accuracy(probs, yv), "val_nll": M.nll(probs, yv),
               "val_ece": M.ece(probs, yv)}  # fmt: skip
        history.append(row)
        print(f"epoch {epoch + 1}: validation {row}", flush=True)
        if not best or row["val_ece"] < best["val_ece"]:
            post = vi.posterior
            mean = {k: v.clone() for k, v in post.mean.items()}
            best.update(row, posterior=Posterior(mean, {k: v.clone() for k, v in post.var.items()}, dict(post.meta)))

    start = time.perf_counter()
    vi = MeanFieldVI(loaded, "classification", prior_std=args.prior_std, init_std=args.init_std, lr=args.lr,
                     n_data=len(fit_idx), seed=args.seed)  # fmt: skip
    vi.fit(batches, epochs=args.epochs, on_epoch_end=score if args.val else None)
    train_seconds = time.perf_counter() - start
    if args.val:  # the epoch chosen on validation data
        chosen = best["posterior"]
        chosen.meta["epoch_chosen"] = best["epoch"]
        fresh = fresh_model()
        fresh.module = bayesian_from_posterior(fresh.module, chosen, fresh.family)
        loaded = fresh
    torch.manual_seed(args.seed)
    vi_sp, bayes = test_metrics(loaded, test_data, args.samples)
    # paired bootstrap over the test images: is the ECE / NLL difference larger than the test set's noise?
    probs_vi, probs_det = vi_sp.mean(0), det_sp[0]
    paired = {name: M.paired_bootstrap(fn, probs_vi, probs_det, test_data.labels, resamples=args.bootstrap,
                                       seed=args.seed)
              for name, fn in (("ece", M.ece), ("nll", M.nll))}  # fmt: skip
    out = Path(args.out or f"bench/out/vi-{args.model}.json")
    final_post = best["posterior"] if args.val else vi.posterior
    post_path = final_post.save(out.with_suffix(".posterior.safetensors"))

    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [
        f"{args.model}: deterministic vs mean-field VI ({args.epochs} epochs on {len(fit_idx)} images of {train}"
        + (f", epoch {best['epoch']} chosen by validation ECE on {args.val} held-out images" if args.val else "")
        + (
            f"; deterministic net retrained on those {len(fit_idx)} images ({retrain_seconds:.0f} s)"
            if args.retrain
            else ""
        )
        + f"; prior std {args.prior_std}, init std {args.init_std}, lr {args.lr}; {machine})",
        "",
        "| model | samples T | accuracy | NLL | ECE | Brier | mutual information | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r, t in (("deterministic", det, "—"), ("VI", bayes, f"{train_seconds:.0f}")):
        lines.append(
            f"| {name} | {r['samples']} | {100 * r['accuracy']:.2f}% | {r['nll']:.4f} | {r['ece']:.4f} "
            f"| {r['brier']:.4f} | {r['mutual_information']:.4f} | {t} |"
        )
    lines.append("")
    for name, r in paired.items():
        lines.append(
            f"VI − deterministic {name.upper()}: {r['difference']:+.4f} (95% paired-bootstrap interval "
            f"[{r['low']:+.4f}, {r['high']:+.4f}], {args.bootstrap} resamples; VI lower in "
            f"{100 * r['fraction_below_zero']:.1f}% of them)"
        )
    print("\n".join(lines))
    print(informativeness_table(final_post))
    with atomic_file(out, "w") as fh:
        json.dump({"machine": machine, "args": vars(args), "deterministic": det, "vi": bayes,
                   "train_seconds": train_seconds, "retrain_seconds": retrain_seconds, "posterior": str(post_path),
                   "validation": history, "paired_bootstrap": paired, "layers": final_post.summary()},
                  fh, indent=2, default=str)  # fmt: skip


if __name__ == "__main__":
    main()
