"""QBNN on Dirty-MNIST: the 8→2-bit sweep of VPQ / SPQ / JQ (all quantizers at the same width), a float BNN, the
post-training baseline (per-tensor symmetric 8-bit uniform μ and σ of the float BNN, no retraining) and two
ablations at --ablation-bits (σ quantizer log → uniform; SoftPlus → ReLU). Seeds are pooled (mean ± std).
Prints a markdown table, writes JSON, one scatter plot (softmax entropy vs mutual information) per
configuration of the first seed, a summary plot of accuracy and both AUROCs against the bit-width and a bar
plot of the ablations next to the baseline (`--replot JSON` redraws both from a finished run).

    .venv/bin/python bench/qbnn.py --seeds 0,1,2 --pretrain-epochs 3 --epochs 3 --samples 16
    .venv/bin/python bench/qbnn.py --seeds 0 --bits 4 --modes jq --epochs 1 --max-per-source 5000   # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from bayesquant.bnn.qbnn import QBNN, NetConfig, QuantConfig, train_qbnn
from bayesquant.bnn.qbnn_run import (
    TrainConfig,
    evaluate_qbnn,
    load_data,
    markdown_table,
    pretrained_net,
    ptq_baseline,
    run_config,
)
from bayesquant.paths import atomic_file, save_png


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _summary_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("accuracy", "auroc_aleatoric", "auroc_epistemic")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for mode, colour in (("vpq", "tab:blue"), ("spq", "tab:orange"), ("jq", "tab:green")):
        sel = [r for r in rows if r.get("study") == "sweep" and r["mode"] == mode]
        bits = sorted({r["mu_bits"] if mode != "spq" else r["sample_bits"] for r in sel})
        for ax, m in zip(axes, metrics, strict=True):
            means = []
            for b in bits:
                vals = [r[m] for r in sel if (r["mu_bits"] if mode != "spq" else r["sample_bits"]) == b]
                means.append(sum(vals) / len(vals))
            ax.plot(bits, means, "o-", color=colour, label=mode.upper())
    for ax, m in zip(axes, metrics, strict=True):
        for config, ls in (("float", "--"), ("float-ws", ":")):
            floats = [r[m] for r in rows if r.get("study") == "sweep" and r["config"] == config]
            if floats:
                ax.axhline(sum(floats) / len(floats), color="gray", ls=ls, label=f"{config} BNN")
        ax.set_xlabel("bits")
        ax.set_title(m)
        ax.invert_xaxis()
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def _ablation_plot(rows: list[dict], path: Path, bits: int) -> None:
    """Bars (mean ± std over seeds) of accuracy and both AUROCs for the 4-bit ablations and the post-training
    baseline, next to the float BNNs and VPQ / JQ at 8 and `bits` bits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def pick(study: str, activation: str, config: str) -> list[dict]:
        return [r for r in rows if (r.get("study"), r["activation"], r["config"]) == (study, activation, config)]

    jq = f"jq-{bits}/{bits}/{bits}"
    bars = [  # (label, rows)
        ("float", pick("sweep", "softplus", "float")),
        ("float-ws", pick("sweep", "softplus", "float-ws")),
        ("PTQ-8 μ,σ\n(baseline)", pick("baseline", "softplus", "ptq-8 (tensor, symmetric)")),
        ("VPQ-8", pick("sweep", "softplus", "vpq-8/8")),
        (f"VPQ-{bits}", pick("sweep", "softplus", f"vpq-{bits}/{bits}")),
        ("JQ-8", pick("sweep", "softplus", "jq-8/8/8")),
        (f"JQ-{bits}\nlog σ", pick("sweep", "softplus", jq)),
        (f"JQ-{bits}\nuniform σ", pick("ablation", "softplus", f"{jq} σ uniform")),
        ("float\nReLU", pick("ablation", "relu", "float")),
        (f"JQ-{bits}\nReLU", pick("ablation", "relu", jq)),
    ]
    bars = [(label, sel) for label, sel in bars if sel]
    metrics = ("accuracy", "auroc_aleatoric", "auroc_epistemic")
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    colours = ["tab:gray" if "float" in label else "tab:red" if "PTQ" in label else "tab:green" for label, _ in bars]
    for ax, m in zip(axes, metrics, strict=True):
        means, stds = [], []
        for _, sel in bars:
            vals = torch.tensor([r[m] for r in sel], dtype=torch.float64)
            means.append(float(vals.mean()))
            stds.append(float(vals.std()) if len(vals) > 1 else 0.0)
        ax.bar(range(len(bars)), means, yerr=stds, color=colours, capsize=3)
        low = min(mu - sd for mu, sd in zip(means, stds, strict=True))
        high = max(mu + sd for mu, sd in zip(means, stds, strict=True))
        ax.set_ylim(low - 0.25 * (high - low), high + 0.1 * (high - low))
        ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=7, rotation=60)
        ax.set_title(m)
    fig.suptitle(f"ablations at {bits} bits and the post-training baseline (mean ± std over seeds)", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def _plots(rows: list[dict], plots: Path, arch: str, ablation_bits: int) -> None:
    _summary_plot(rows, plots / f"{arch}-summary.png")
    if any(r.get("study") == "ablation" for r in rows):
        _ablation_plot(rows, plots / f"{arch}-ablations.png", ablation_bits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mlp", help="mlp | lenet")
    parser.add_argument("--modes", default="vpq,spq,jq")
    parser.add_argument("--bits", default="8,7,6,5,4,3,2")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16, help="Monte-Carlo samples T")
    parser.add_argument("--init-std", type=float, default=TrainConfig.init_std)
    parser.add_argument("--prior-std", type=float, default=TrainConfig.prior_std)
    parser.add_argument("--sigma-lr", type=float, default=TrainConfig.sigma_lr,
                        help="stage-2 learning rate of σ (the learning rate, 1e-3, trains σ like μ)")  # fmt: skip
    parser.add_argument("--draws", type=int, default=1, help="weight draws per batch in the whole-weight modes")
    parser.add_argument("--granularity", default="channel", help="channel | tensor")
    parser.add_argument("--ablation-bits", type=int, default=4, help="bit-width of the ablation rows")
    parser.add_argument("--paper-grid-bits", default="4,3,2",
                        help="JQ with the paper's fixed [−1, 1] grids at these widths ('' to skip)")  # fmt: skip
    parser.add_argument("--no-ablations", action="store_true", help="skip the PTQ baseline and the ablations")
    parser.add_argument("--ambiguous", help="directory of the original Ambiguous-MNIST files (default: generated)")
    parser.add_argument("--max-per-source", type=int, help="first N images of each source (smoke runs)")
    parser.add_argument("--out", default="bench/out/qbnn.json")
    parser.add_argument("--plots", default="bench/out/qbnn-plots", help="directory of the PNGs")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--replot", metavar="JSON", help="only redraw the summary and ablation plots of a finished run")
    args = parser.parse_args()
    if args.replot:
        done = json.loads(Path(args.replot).read_text())
        _plots(done["rows"], Path(args.plots), done["args"]["arch"], done["args"]["ablation_bits"])
        return

    start = time.perf_counter()
    train, test = load_data(args.ambiguous, max_per_source=args.max_per_source, progress=args.progress)
    plots = Path(args.plots)
    net_cfg = NetConfig(args.arch)
    base = QuantConfig(granularity=args.granularity)
    modes, bits, seeds = args.modes.split(","), _ints(args.bits), _ints(args.seeds)
    rows: list[dict] = []

    def add(row: dict, study: str) -> None:
        row["study"] = study
        rows.append(row)
        print(f"{study:>9} seed {row['seed']} {row['activation']:>8} {row['config']:<22} acc {row['accuracy']:.4f} "
              f"AUROC ale {row['auroc_aleatoric']:.3f} epi {row['auroc_epistemic']:.3f} "
              f"×{row['size_reduction']:.2f} ({row['seconds']:.0f} s)", flush=True)  # fmt: skip

    for seed in seeds:
        tc = TrainConfig(pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, samples=args.samples, seed=seed,
                         init_std=args.init_std, prior_std=args.prior_std, sigma_lr=args.sigma_lr,
                         draws=args.draws)  # fmt: skip
        net = pretrained_net(net_cfg, train, tc, progress=args.progress)

        def plot(name: str, seed: int = seed) -> Path | None:
            return plots / f"{args.arch}-{name}.png" if seed == seeds[0] else None

        # float BNN, kept for the post-training baseline
        t0 = time.perf_counter()
        float_model = QBNN.from_pretrained(net, net_cfg, QuantConfig("float"), tc.prior_std, tc.init_std)
        stats = train_qbnn(
            float_model, train.images, train.labels, epochs=tc.epochs, lr=tc.lr, batch_size=tc.batch_size,
            kl_anneal=tc.kl_anneal, seed=seed, draws=tc.draws, sigma_lr=tc.sigma_lr, progress=args.progress,
        )  # fmt: skip
        head = {"arch": args.arch, "activation": "softplus", "seed": seed}
        row = evaluate_qbnn(float_model, test, tc, plot=plot("float"))
        timing = {"seconds": time.perf_counter() - t0, "seconds_per_epoch": stats["seconds_per_epoch"]}
        add(head | QuantConfig("float").to_dict() | {"config": "float"} | row | timing, "sweep")
        ws = QuantConfig("float", weight_sampling=True)  # float, trained the way SPQ/JQ are (whole weight draws)
        add(run_config(net_cfg, ws, tc, train, test, pretrained=net, plot=plot(ws.slug()), progress=args.progress),
            "sweep")  # fmt: skip
        if not args.no_ablations:
            t0 = time.perf_counter()
            ptq = ptq_baseline(float_model, bits=8)
            row = evaluate_qbnn(ptq, test, tc, plot=plot("ptq8"))
            add(head | ptq.quant.to_dict() | {"config": "ptq-8 (tensor, symmetric)"} | row
                | {"seconds": time.perf_counter() - t0}, "baseline")  # fmt: skip
        for mode in modes:
            for b in bits:
                quant = dataclasses.replace(base, mode=mode, mu_bits=b, sigma_bits=b, sample_bits=b)
                add(run_config(net_cfg, quant, tc, train, test, pretrained=net, plot=plot(quant.slug()),
                               progress=args.progress), "sweep")  # fmt: skip
        if not args.no_ablations:
            b = args.ablation_bits
            jq = dataclasses.replace(base, mode="jq", mu_bits=b, sigma_bits=b, sample_bits=b)
            uni = dataclasses.replace(jq, sigma_quantizer="uniform")
            row = run_config(net_cfg, uni, tc, train, test, pretrained=net, plot=plot(f"{jq.slug()}-uniform-sigma"),
                             progress=args.progress)  # fmt: skip
            add(row | {"config": f"{uni.label()} σ uniform"}, "ablation")
            relu_cfg = dataclasses.replace(net_cfg, activation="relu")
            relu_net = pretrained_net(relu_cfg, train, tc, progress=args.progress)
            for quant in (QuantConfig("float"), jq):
                add(run_config(relu_cfg, quant, tc, train, test, pretrained=relu_net,
                               plot=plot(f"{quant.slug()}-relu"), progress=args.progress), "ablation")  # fmt: skip
        for b in _ints(args.paper_grid_bits):  # the paper's quantizer: one grid of 2^b levels over [−1, 1]
            paper = dataclasses.replace(base, mode="jq", mu_bits=b, sigma_bits=b, sample_bits=b, fixed_range=True)
            row = run_config(net_cfg, paper, tc, train, test, pretrained=net, plot=plot(f"{paper.slug()}-fixed"),
                             progress=args.progress)  # fmt: skip
            add(row | {"config": f"{paper.label()} fixed [−1, 1]"}, "paper grid")

    total = time.perf_counter() - start
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    table = markdown_table(rows, group=("study", "arch", "activation", "config"))
    header = (f"QBNN on Dirty-MNIST ({args.arch}, {len(train)} training / {len(test)} test images, ambiguous: "
              f"{test.ambiguous_source}; {args.pretrain_epochs}+{args.epochs} epochs, T={args.samples}, seeds "
              f"{args.seeds}, {args.granularity} grids, prior N(0, {args.prior_std:g}²), σ learning rate "
              f"{args.sigma_lr or TrainConfig.lr:g}, "
              f"{args.draws} draw(s) per batch; {machine}; total {total / 60:.1f} min)")  # fmt: skip
    print(f"\n{header}\n\n{table}")
    out = Path(args.out)
    with atomic_file(out, "w") as fh:
        json.dump({"machine": machine, "args": vars(args), "total_seconds": total, "rows": rows}, fh, indent=2,
                  default=str)  # fmt: skip
    with atomic_file(out.with_suffix(".md"), "w") as fh:
        fh.write(f"{header}\n\n{table}\n")
    _plots(rows, plots, args.arch, args.ablation_bits)


if __name__ == "__main__":
    main()
