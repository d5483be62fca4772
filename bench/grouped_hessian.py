"""How good is one Hessian per grouped convolution? GPTQ with the groups' mean Hessian against GPTQ with each
group's own Hessian, on the layer-output error each group really incurs.

A grouped convolution (a depthwise one: one input channel per group) multiplies group g's output rows with
group g's own input patches, so its exact GPTQ objective is Σ_g tr((W_g − Q_g) H_g (W_g − Q_g)ᵀ) with
H_g = 2 X_gᵀ X_g / N. bayesquant's solvers take one H per layer (the mean of the H_g, docs/methods.md); this
script quantizes every grouped convolution of a model both ways, and with round-to-nearest, from the float
model's own layer inputs, and prints each method's exact objective relative to round-to-nearest's.

    .venv/bin/python bench/grouped_hessian.py --model efficientnet-lite0 --calib images:DIR --bits 3 4 \
        --out bench/out/grouped-hessian.json
    .venv/bin/python bench/grouped_hessian.py --photo-crops DIR   # writes 96 crops of the photos that ship with
                                                                    # matplotlib and scikit-learn into DIR, then exits
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from bayesquant.data.calibration import calibration_batches
from bayesquant.models import load_model
from bayesquant.nn.patches import grouped_patches
from bayesquant.paths import atomic_file
from bayesquant.solvers.gptq import gptq_quantize
from bayesquant.solvers.rtn import rtn_quantize


def photo_paths() -> list[Path]:
    import matplotlib
    import sklearn

    mpl = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    sk = Path(sklearn.__file__).parent / "datasets" / "images"
    return [mpl, sk / "china.jpg", sk / "flower.jpg"]


def write_photo_crops(directory: Path, n: int, seed: int = 0) -> None:
    """`n` random square crops (a third to all of the shorter side, flipped at random) of the three photos."""
    from PIL import Image

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    photos = [Image.open(p).convert("RGB") for p in photo_paths()]
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(min(img.size) * rng.uniform(1 / 3, 1))
        left, top = rng.randint(0, img.size[0] - side), rng.randint(0, img.size[1] - side)
        crop = img.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(directory / f"crop{i:03d}.png")


@torch.no_grad()
def group_hessians(model: nn.Module, convs: dict[str, nn.Conv2d], batches) -> dict[str, torch.Tensor]:
    """Per grouped convolution: H_g = 2 X_gᵀ X_g / N for each group g, (groups, c, c), from the float model."""
    sums = {
        n: torch.zeros(m.groups, m.weight[0].numel(), m.weight[0].numel(), dtype=torch.float64)
        for n, m in convs.items()
    }
    rows = dict.fromkeys(convs, 0)

    def hook(name: str):
        def add(m: nn.Conv2d, args: tuple, _out) -> None:
            cols = grouped_patches(m, args[0]).double()  # (B, G, c, L)
            x = cols.permute(1, 0, 3, 2).reshape(m.groups, -1, cols.shape[2])  # (G, B·L, c)
            sums[name] += 2 * torch.bmm(x.transpose(1, 2), x)
            rows[name] += x.shape[1]

        return add

    handles = [m.register_forward_hook(hook(n)) for n, m in convs.items()]
    try:
        for args, kwargs in tqdm(batches, desc="layer inputs", unit="batch"):
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return {n: (s / rows[n]).float() for n, s in sums.items()}


def exact_objective(W: torch.Tensor, Q: torch.Tensor, Hg: torch.Tensor) -> float:
    """Σ_g tr((W_g − Q_g) H_g (W_g − Q_g)ᵀ), W and Q (rows, c), Hg (groups, c, c)."""
    E = (W - Q).double().reshape(Hg.shape[0], -1, W.shape[1])  # (G, rows/G, c)
    return float(torch.einsum("gri,gij,grj->", E, Hg.double(), E))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--calib", help="calibration SPEC (images:DIR for an ImageNet model)")
    p.add_argument("--nsamples", type=int, default=96)
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--photo-crops", type=Path, help="write crops of the bundled photos into this folder and exit")
    args = p.parse_args(argv)
    if args.photo_crops:
        write_photo_crops(args.photo_crops, args.nsamples, args.seed)
        print(f"{args.nsamples} crops written to {args.photo_crops}")
        return 0

    loaded = load_model(args.model)
    convs = {
        n: m
        for n, m in loaded.family.quantizable_modules(loaded.module).items()
        if isinstance(m, nn.Conv2d) and m.groups > 1
    }
    if not convs:
        print(f"{args.model} has no grouped convolution", file=sys.stderr)
        return 2
    batches = calibration_batches(loaded, args.calib, args.nsamples, seed=args.seed)
    hessians = group_hessians(loaded.module, convs, batches)
    rows = []
    start = time.perf_counter()
    for name, m in tqdm(convs.items(), desc="layers", unit="layer"):
        W = m.weight.detach().flatten(1).float()
        Hg = hessians[name]
        per_group = W.shape[0] // m.groups
        for bits in args.bits:
            rtn = rtn_quantize(W, bits).dequantize()
            mean = gptq_quantize(W, Hg.mean(0), bits).dequantized
            exact = torch.cat(
                [
                    gptq_quantize(W[g * per_group : (g + 1) * per_group], Hg[g], bits).dequantized
                    for g in range(m.groups)
                ]
            )
            base = exact_objective(W, rtn, Hg)
            rows.append(
                {
                    "layer": name,
                    "shape": list(m.weight.shape),
                    "groups": m.groups,
                    "bits": bits,
                    "rtn": base,
                    "gptq_mean_h": exact_objective(W, mean, Hg),
                    "gptq_group_h": exact_objective(W, exact, Hg),
                }
            )
    seconds = time.perf_counter() - start

    print(
        f"\n{args.model}, calibration {args.calib or 'default'} ({args.nsamples} examples), "
        f"{len(convs)} grouped convolutions"
    )
    print(
        "| bits | layers | GPTQ, mean H / RTN: median (range) | GPTQ, each group's H / RTN: median (range) "
        "| summed objective RTN / mean H / group H |"
    )
    print("|---|---|---|---|---|")
    summary = {}
    for bits in args.bits:
        rs = [r for r in rows if r["bits"] == bits and r["rtn"] > 0]
        mean_r = [r["gptq_mean_h"] / r["rtn"] for r in rs]
        group_r = [r["gptq_group_h"] / r["rtn"] for r in rs]
        sums = [sum(r[k] for r in rs) for k in ("rtn", "gptq_mean_h", "gptq_group_h")]
        summary[bits] = {
            "median_mean_h": statistics.median(mean_r),
            "median_group_h": statistics.median(group_r),
            "sums": sums,
        }
        print(
            f"| {bits} | {len(rs)} | {statistics.median(mean_r):.3f} ({min(mean_r):.3f}–{max(mean_r):.3f}) | "
            f"{statistics.median(group_r):.3f} ({min(group_r):.3f}–{max(group_r):.3f}) | "
            f"{sums[0]:.4g} / {sums[1]:.4g} / {sums[2]:.4g} |"
        )
    print(f"({seconds:.0f} s on {torch.get_num_threads()} threads)")
    if args.out:
        report = {"model": args.model, "calib": args.calib, "nsamples": args.nsamples, "rows": rows, "summary": summary}
        with atomic_file(args.out, "w") as fh:
            fh.write(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
