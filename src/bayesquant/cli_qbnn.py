"""`bayesquant qbnn train|eval|sweep`: quantized Bayesian nets (VPQ / SPQ / JQ) on Dirty-MNIST.

    bayesquant qbnn train --arch mlp --mode jq --bits 4 --epochs 5 --out runs/jq4 --plot jq4.png --json jq4.json
    bayesquant qbnn eval  --model runs/jq4 --samples 32 --json jq4-eval.json
    bayesquant qbnn sweep --modes vpq,spq,jq --bits-list 8,7,6,5,4,3,2 --seeds 0,1,2 --out-dir runs/sweep

`add_qbnn_parser(sub)` adds the verb to the subparsers of `bayesquant.cli.build_parser`. Strings become configs
here; user errors are `UserError`s that name the option, the value and the fix.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bayesquant.config import TrainConfig
from bayesquant.errors import UserError
from bayesquant.paths import atomic_file

__all__ = ["add_qbnn_parser", "cmd_qbnn"]

_SHOWN = ["config", "accuracy", "ece", "auroc_aleatoric", "auroc_epistemic", "size_reduction", "storable_bits",
          "seconds"]  # fmt: skip


def _int_list(text: str, option: str, low: int | None = None, high: int | None = None) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated integers, e.g. 8,7,6") from None
    if not values:
        raise UserError(f"{option} {text!r}: give at least one value")
    bad = [v for v in values if (low is not None and v < low) or (high is not None and v > high)]
    if bad:
        raise UserError(f"{option} {text!r}: {bad} outside {low}..{high}")
    return values


def _net_config(args: argparse.Namespace) -> Any:
    from bayesquant.bnn.qbnn import NetConfig

    return NetConfig(args.arch, args.activation, hidden=tuple(_int_list(args.hidden, "--hidden", 1)), bias=args.bias)


def _quant_config(args: argparse.Namespace, mode: str | None = None) -> Any:
    from bayesquant.bnn.qbnn import QuantConfig

    bits = args.bits
    if bits is not None and not 1 <= bits <= 8:
        raise UserError(f"--bits {bits}: must be a bit-width in 1..8")

    def pick(specific: int | None, name: str) -> int:
        value = specific if specific is not None else bits if bits is not None else 4
        if not 1 <= value <= 8:
            raise UserError(f"--{name} {value}: must be a bit-width in 1..8")
        return value

    if args.weight_clip is not None and args.weight_clip < 0:
        raise UserError(f"--weight-clip {args.weight_clip}: must be ≥ 0 (0 turns clipping off)")
    return QuantConfig(
        mode=mode or args.mode, mu_bits=pick(args.mu_bits, "mu-bits"), sigma_bits=pick(args.sigma_bits, "sigma-bits"),
        sample_bits=pick(args.sample_bits, "sample-bits"), sigma_quantizer=args.sigma_quantizer,
        granularity=args.granularity, symmetric=args.symmetric, weight_clip=args.weight_clip or None,
        fixed_range=args.fixed_range, weight_sampling=args.weight_sampling,
    )  # fmt: skip


def _train_config(args: argparse.Namespace, seed: int | None = None) -> Any:
    return TrainConfig(
        pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, lr=args.lr, pretrain_lr=args.pretrain_lr,
        batch_size=args.batch_size, prior_std=args.prior_std, init_std=args.init_std, kl_anneal=args.kl_anneal,
        samples=args.samples, seed=args.seed if seed is None else seed, sigma_lr=args.sigma_lr, draws=args.draws,
    )  # fmt: skip


def _write(path: str | Path | None, obj: dict[str, Any]) -> None:
    if path:
        with atomic_file(Path(path), "w") as fh:
            json.dump(obj, fh, indent=2, default=str)
            fh.write("\n")


def _data(args: argparse.Namespace) -> tuple[Any, Any]:
    from bayesquant.bnn.qbnn_run import load_data

    if args.max_per_source is not None and args.max_per_source < 1:
        raise UserError(f"--max-per-source {args.max_per_source}: must be ≥ 1 (or left out: all images)")
    return load_data(args.ambiguous, max_per_source=args.max_per_source, progress=not args.no_progress)


def cmd_qbnn(args: argparse.Namespace) -> None:
    from bayesquant.cli import peak_rss_gb, print_table

    start = time.perf_counter()
    if args.action == "train":
        from bayesquant.bnn.qbnn_run import run_config

        net, quant, tc = _net_config(args), _quant_config(args), _train_config(args)
        if args.out and Path(args.out).exists() and not args.overwrite:
            raise UserError(f"--out {args.out}: already exists; choose another directory or pass --overwrite")
        train, test = _data(args)
        row = run_config(net, quant, tc, train, test, out=args.out, plot=args.plot, overwrite=args.overwrite,
                         progress=not args.no_progress)  # fmt: skip
        row |= {"out": args.out, "ambiguous": test.ambiguous_source, "train_config": tc.to_dict()}
        rows = [row]
    elif args.action == "eval":
        from bayesquant.bnn.qbnn_io import load_qbnn
        from bayesquant.bnn.qbnn_run import evaluate_model

        if not args.model:
            raise UserError("--model: required for `qbnn eval`; pass the directory written by `qbnn train --out DIR`")
        model, config = load_qbnn(args.model)
        train, test = _data(args)
        row = evaluate_model(model, test, _train_config(args), args.plot, f"{args.model} ({model.quant.label()})")
        row = {"config": model.quant.label(), "model": args.model, **config["size"], **row,
               "ambiguous": test.ambiguous_source}  # fmt: skip
        rows = [row]
    else:
        from bayesquant.bnn.qbnn_run import markdown_table, sweep

        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        bad = [m for m in modes if m not in ("float", "vpq", "spq", "jq")]
        if bad or not modes:
            raise UserError(f"--modes {args.modes!r}: valid modes are vpq, spq, jq (float is always added)")
        bits = _int_list(args.bits_list, "--bits-list", 1, 8)
        seeds = _int_list(args.seeds, "--seeds")
        out_dir = Path(args.out_dir) if args.out_dir else None
        train, test = _data(args)
        rows = sweep(_net_config(args), _train_config(args), train, test, modes=[m for m in modes if m != "float"],
                     bits=bits, seeds=seeds, base=_quant_config(args, mode="jq"), plot_dir=out_dir,
                     progress=not args.no_progress)  # fmt: skip
        if out_dir is not None:
            _write(out_dir / "qbnn-sweep.json", {"rows": rows})
            with atomic_file(out_dir / "qbnn-sweep.md", "w") as fh:
                fh.write(markdown_table(rows) + "\n")
        print(markdown_table(rows))
    seconds = time.perf_counter() - start
    for r in rows:
        r.setdefault("seconds", seconds)
    if args.action != "sweep":
        print_table(rows, [c for c in _SHOWN if c in rows[0]])
    summary = rows[0] if len(rows) == 1 else {"rows": rows}
    summary = summary | {"total_seconds": seconds, "peak_rss_gb": peak_rss_gb()}
    _write(args.json, summary)


def add_qbnn_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `qbnn train|eval|sweep` to the subparsers `sub` of the `bayesquant` parser; returns the new parser."""
    p = sub.add_parser("qbnn", help="quantized Bayesian nets (VPQ / SPQ / JQ) on Dirty-MNIST: train, eval, sweep")
    p.add_argument("action", choices=["train", "eval", "sweep"])
    g = p.add_argument_group("network")
    g.add_argument("--arch", default="mlp", help="mlp (784-100-100-10, the paper's) | lenet")
    g.add_argument("--activation", default="softplus", help="softplus (paper) | relu (ablation)")
    g.add_argument("--hidden", default="100,100", help="mlp hidden widths")
    g.add_argument("--bias", action="store_true", help="give the layers biases (paper: bias-free)")
    g = p.add_argument_group("quantization")
    g.add_argument("--mode", default="jq", help="float | vpq (μ, σ) | spq (sampled weights) | jq (both)")
    g.add_argument("--bits", type=int, help="all three bit-widths at once (default 4)")
    g.add_argument("--mu-bits", type=int, help="B1: uniform quantizer of μ")
    g.add_argument("--sigma-bits", type=int, help="B2: quantizer of σ")
    g.add_argument("--sample-bits", type=int, help="A: uniform quantizer of each sampled weight")
    g.add_argument("--sigma-quantizer", default="log", help="log (paper) | uniform (ablation)")
    g.add_argument("--granularity", default="channel", help="channel (a grid per output row) | tensor")
    g.add_argument("--symmetric", action="store_true", help="symmetric ±max|x| uniform grids (default min–max)")
    g.add_argument("--weight-clip", type=float, default=1.0, help="clip μ and samples to [−c, c]; 0 = off")
    g.add_argument(
        "--weight-sampling",
        action="store_true",
        help="float/VPQ: draw whole weight matrices as SPQ/JQ do (default: local reparameterization)",
    )
    g.add_argument("--fixed-range", action="store_true",
                   help="the paper's grids: μ and samples on 2^b levels over [−c, c], one per tensor")  # fmt: skip
    g = p.add_argument_group("training and evaluation")
    tc = TrainConfig()
    g.add_argument("--pretrain-epochs", type=int, default=tc.pretrain_epochs, help="stage 1: deterministic epochs")
    g.add_argument("--epochs", type=int, default=tc.epochs, help="stage 2: quantized BNN epochs")
    g.add_argument("--lr", type=float, default=tc.lr, help="stage 2 Adam learning rate (cosine decay)")
    g.add_argument(
        "--sigma-lr",
        type=float,
        default=tc.sigma_lr,
        help=f"stage 2 learning rate of σ (default {tc.sigma_lr:g}; the value of --lr trains σ like μ)",
    )
    g.add_argument(
        "--draws", type=int, default=tc.draws, help="stage 2: weight draws per batch (spq, jq, --weight-sampling)"
    )
    g.add_argument("--pretrain-lr", type=float, default=tc.pretrain_lr, help="stage 1 Adam learning rate")
    g.add_argument("--batch-size", type=int, default=tc.batch_size)
    g.add_argument(
        "--prior-std",
        type=float,
        default=tc.prior_std,
        help=f"prior N(0, p²) on every weight (default {tc.prior_std:g})",
    )
    g.add_argument("--init-std", type=float, default=tc.init_std, help="initial σ of every weight")
    g.add_argument(
        "--kl-anneal", type=float, default=tc.kl_anneal, help="fraction of stage-2 steps over which β rises to 1"
    )
    g.add_argument("--samples", type=int, default=tc.samples, help="Monte-Carlo samples T at evaluation")
    g.add_argument("--seed", type=int, default=tc.seed)
    g = p.add_argument_group("data and outputs")
    g.add_argument("--ambiguous", help="directory of the original amnist_samples.pt / amnist_labels.pt "
                   "(default: the generated, cached Ambiguous-MNIST)")  # fmt: skip
    g.add_argument("--max-per-source", type=int, help="use the first N images of each source (quick runs)")
    g.add_argument("--model", help="eval: a directory written by `qbnn train --out`")
    g.add_argument("--out", help="train: write the packed QBNN to this directory")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    g.add_argument("--plot", help="train/eval: entropy vs mutual-information scatter (PNG)")
    g.add_argument("--modes", default="vpq,spq,jq", help="sweep: modes (a float BNN row is always added)")
    g.add_argument("--bits-list", default="8,7,6,5,4,3,2", help="sweep: bit-widths (all quantizers alike)")
    g.add_argument("--seeds", default="0", help="sweep: seeds, e.g. 0,1,2")
    g.add_argument("--out-dir", help="sweep: write qbnn-sweep.json, qbnn-sweep.md and one scatter plot per run")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--json", help="write the results as one JSON object to this path")
    p.set_defaults(func=cmd_qbnn)
    return p
