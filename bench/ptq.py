"""Post-training quantization methods side by side on a zoo model (or a Hugging Face directory, evaluated
on bbc-news:test unless --data says otherwise), each configuration in its own process (so
peak RSS is its own): quantize, save, evaluate; prints a markdown table, writes JSON and a plot of quality
against storable bits (`bayesquant bench ptq` runs this script).

    .venv/bin/python bench/ptq.py --model smollm2-135m --configs rtn:4:64 gptq:4:64 gptq:3:64:act
    .venv/bin/python bench/ptq.py --model digit-cnn --configs gptq:3:0:act baq:3:0:storable bayesq:3:0:storable

A config is METHOD:BITS:GROUP[:FLAG...] with GROUP 0 meaning per output channel, or `fp32` for the
unquantized model. Flags: `act` (--act-order), `noact` (--no-act-order), `storable` (BITS is a storable
budget: bayesq, baq), `mse` (--grid mse), `NAME=VALUE` (passed as --NAME VALUE, e.g. rounds=2, or
embedding_bits=4 to round the embedding tables too; the table's "file MB" column then shows it). Peak RSS is
that of quantizing and saving (the evaluation's own peak is in the JSON). `--also-data SPEC` evaluates
every saved model on a second SPEC too (e.g. the off-domain `fortunes:test` for a language model). `--calib SPEC`
calibrates every configuration on SPEC, e.g. `images:DIR` for EfficientNet; an evaluation SPEC without labels (an
image folder without class folders) is scored by KL to the float model (in 10⁻³ nats, lower is better) and
agreement with it:

    .venv/bin/python bench/ptq.py --model efficientnet-lite0 --calib images:CALIB_DIR --data images:EVAL_DIR \
        --nsamples 96 --configs gptq:4:0 bayesq:4.1528:0:storable baq:4.1528:0:storable

`--seeds 0,1,2,3,4` repeats every configuration with each calibration seed (fp32 once) and prints mean ± std;
`--budgets 3,3.5,4` then compares each method with the best baseline configuration inside every storable
budget ± 0.1, seed by seed (a classifier's accuracy gaps of a few test examples against the calibration draw):

    .venv/bin/python bench/ptq.py --model digit-cnn --seeds 0,1,2,3,4 --budgets 3,3.5,4 \
        --configs fp32 gptq:3:0 gptq:3:64 gptq:4:0 bayesq:3:0:storable bayesq:3.5:0:storable bayesq:4:0:storable
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bayesquant.models.zoo import is_hf_dir
from bayesquant.paths import atomic_file, save_png

SCALE = {"accuracy": 100.0, "kl_to_reference": 1000.0}  # shown in points, and in 10⁻³ nats
DEFAULT_DATA = {"smollm2-135m": "bbc-news:test", "minilm-bbc": "bbc-news:test", "resnet-fashion": "fashion-mnist:test"}
CLI = [sys.executable, "-m", "bayesquant.cli"]  # the bayesquant command of this interpreter


def also_evaluate(model_or_dir: str, spec: str, work: Path, slug: str) -> dict:
    """Evaluate a saved model (or a zoo key) on a second SPEC, e.g. off-domain text."""
    js = work / f"{slug}-also.json"
    cmd = [*CLI, "eval", "--model", model_or_dir, "--data", spec, "--json", str(js)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    r = json.loads(js.read_text())
    key = metric_of([r])
    return {f"{key}_also": r[key], "also_data": spec, "also_eval_seconds": r["seconds"]}


def float_mb(model: str) -> float:
    """Megabytes of the float model's tensors, as a safetensors file would hold them (tied tensors once)."""
    from bayesquant.io import size_report
    from bayesquant.models import load_model

    return size_report(load_model(model))["other_bytes"] / 1e6


def file_mb(r: dict) -> str:
    """The checkpoint's size in MB (rows measured before the size was recorded: a dash)."""
    return f"{r['file_mb']:.1f}" if "file_mb" in r else "—"


def run_config(model: str, config: str, data: str, work: Path, extra: list[str], also: str | None = None) -> dict:
    slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", config.replace(":", "_"))  # a file name, whatever the flags hold
    js = work / f"{slug}.json"
    if config == "fp32":  # the unquantized reference row
        cmd = [*CLI, "eval", "--model", model, "--data", data, "--json", str(js)]
        cmd += [a for i, a in enumerate(extra) if "--max-windows" in extra[max(i - 1, 0) : i + 1]]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        r = json.loads(js.read_text())
        r |= {"nominal_bits": 32.0, "storable_bits": 32.0, "quantize_seconds": 0.0, "eval_seconds": r["seconds"],
              "file_mb": float_mb(model)}  # fmt: skip
        return r | (also_evaluate(model, also, work, slug) if also else {})
    method, bits, group, *flags = config.split(":")
    out = work / slug
    cmd = [*CLI, "quantize", "--model", model, "--method", method, "--bits", bits, "--out", str(out)]
    cmd += ["--eval", data, "--json", str(js), "--overwrite", *extra]
    if group != "0":
        cmd += ["--group-size", group]
    for flag in flags:
        if "=" in flag:
            name, value = flag.split("=", 1)
            cmd += [f"--{name.replace('_', '-')}", value]
        else:
            cmd += {"act": ["--act-order"], "noact": ["--no-act-order"], "storable": ["--budget", "storable"],
                    "mse": ["--grid", "mse"]}[flag]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    r = json.loads(js.read_text())
    return r | (also_evaluate(str(out), also, work, slug) if also else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--configs", nargs="+")
    parser.add_argument("--tables", nargs="+", metavar="JSON", help="print the tables of finished runs instead "
                        "(their rows pooled, e.g. seeds run in parallel processes; a configuration and seed "
                        "measured again in a later file replaces the earlier row)")  # fmt: skip
    parser.add_argument("--data", help="evaluation SPEC (default: the model's test split)")
    parser.add_argument("--nsamples", help="calibration samples (default: the model's default)")
    parser.add_argument("--calib", help="calibration SPEC for every configuration (default: the model's)")
    parser.add_argument("--max-windows", help="language models: evaluate the first N windows only")
    parser.add_argument("--also-data", help="a second evaluation SPEC, e.g. fortunes:test (off-domain text)")
    parser.add_argument("--out", help="JSON output (default bench/out/ptq-MODEL.json; the plot next to it)")
    parser.add_argument("--seeds", help="comma-separated calibration seeds: every configuration once per seed")
    parser.add_argument("--budgets", help="comma-separated storable budgets: methods against the best baseline")
    parser.add_argument("--baseline", default="gptq", help="the method the --budgets comparison is against")
    parser.add_argument("--bound", type=float, default=0.1, help="--budgets: half-width of each budget's window")
    parser.add_argument("--plot", help="PNG of quality against storable bits (default: next to the JSON; with "
                        "--tables only when given)")  # fmt: skip
    parser.add_argument("--keep", metavar="DIR", help="keep each saved model in DIR/sSEED/CONFIG (for "
                        "bench/paired.py) instead of a temporary directory")  # fmt: skip
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else []
    if args.tables:
        runs = [json.loads(Path(f).read_text()) for f in args.tables]
        rows = pool_rows(runs)
        print_tables(rows, runs[0]["model"], budgets, args.baseline, args.also_data, args.bound)
        if args.plot:
            plot(rows, metric_of(rows), f"{runs[0]['model']} on {runs[0]['data']}", Path(args.plot))
        return
    if not args.model or not args.configs:
        parser.error("--model and --configs are required (or --tables JSON ... to summarize finished runs)")
    directory = Path(args.model).is_dir()  # a user's Hugging Face model (or another model directory)
    fallback = "bbc-news:test" if directory and is_hf_dir(Path(args.model)) else "mnist:test"
    data = args.data or DEFAULT_DATA.get(args.model, fallback)
    extra = ["--nsamples", args.nsamples] if args.nsamples else []
    extra += ["--calib", args.calib] if args.calib else []
    extra += ["--max-windows", args.max_windows] if args.max_windows else []
    path = Path(args.out or f"bench/out/ptq-{Path(args.model).resolve().name if directory else args.model}.json")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:  # seed-major: an interrupted run holds whole seeds
            for config in args.configs:
                if config == "fp32" and seed not in (None, seeds[0]):
                    continue  # no calibration: one row
                seeded = extra + (["--seed", str(seed)] if seed is not None and config != "fp32" else [])
                work = Path(tmp)
                if args.keep and config != "fp32":
                    work = Path(args.keep) / f"s{seed if seed is not None else 0}"  # the model in work/CONFIG
                    work.mkdir(parents=True, exist_ok=True)
                row = run_config(args.model, config, data, work, seeded, args.also_data)
                rows.append({**row, "label": config, "seed": seed})
                with atomic_file(path, "w") as fh:  # after every row: an interrupted run keeps what it measured
                    json.dump({"model": args.model, "data": data, "rows": rows}, fh, indent=2, default=str)
    print_tables(rows, args.model, budgets, args.baseline, args.also_data, args.bound)
    plot(rows, metric_of(rows), f"{args.model} on {data}", Path(args.plot) if args.plot else path.with_suffix(".png"))


def pool_rows(runs: list[dict]) -> list[dict]:
    """The rows of several finished runs, fp32 once: a (configuration, seed) measured again in a later run
    replaces the earlier row (e.g. methods re-run after a change, pooled with the baselines of a first run)."""
    pooled: dict[tuple[str, object], dict] = {}
    for run in runs:
        for r in run["rows"]:
            key = ("fp32", None) if r["label"] == "fp32" else (r["label"], r.get("seed"))
            if key != ("fp32", None) or key not in pooled:
                pooled.pop(key, None)  # re-inserted last: the pooled order follows the latest runs
                pooled[key] = r
    fp32 = [r for key, r in pooled.items() if key == ("fp32", None)]
    return fp32 + [r for key, r in pooled.items() if key != ("fp32", None)]


def metric_of(rows: list[dict]) -> str:
    """perplexity (language models), accuracy (labelled classifiers) or KL to the float model (unlabelled)."""
    return next(k for k in ("perplexity", "accuracy", "kl_to_reference") if k in rows[0])


def print_tables(
    rows: list[dict], model: str, budgets: list[float], baseline: str, also: str | None, bound: float = 0.1
) -> None:
    metric = metric_of(rows)
    if all(r.get("seed") is None for r in rows):
        print(table(rows, model, metric, also))
    else:
        print(seed_table(rows, model, metric))
    for budget in budgets:
        print(budget_table(rows, budget, metric, baseline, bound))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_table(rows: list[dict], model: str, metric: str) -> str:
    """Mean ± std over calibration seeds of every configuration (classifiers: NLL and ECE too)."""
    keys = [metric] + (["nll", "ece"] if metric == "accuracy" else [])
    keys += ["agreement"] if metric == "kl_to_reference" else []
    scale = {**SCALE, "agreement": 100.0}
    digits = {"accuracy": 2, "perplexity": 2, "nll": 4, "ece": 4, "kl_to_reference": 2, "agreement": 2}
    lines = [
        f"| {model} | seeds | storable bits | file MB | " + " | ".join(keys) + " | quantize s |",
        "|---|---|---|---|" + "---|" * len(keys) + "---|",
    ]
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r for r in rows if r["label"] == label]
        cells = []
        for k in keys:
            m, s = mean_std([scale.get(k, 1.0) * r[k] for r in rs])
            cells.append(f"{m:.{digits[k]}f} ± {s:.{digits[k]}f}")
        bits = statistics.fmean(r["storable_bits"] for r in rs)
        secs = statistics.fmean(r["quantize_seconds"] for r in rs)
        size = (
            file_mb(rs[0]) if all("file_mb" in r for r in rs) else "—"
        )  # a checkpoint's size is the same at every seed
        lines.append(f"| {label} | {len(rs)} | {bits:.3f} | {size} | " + " | ".join(cells) + f" | {secs:.0f} |")
    return "\n".join(lines)


def in_budget(rows: list[dict], budget: float, bound: float = 0.1) -> list[dict]:
    return [r for r in rows if r["label"] != "fp32" and abs(r["storable_bits"] - budget) <= bound + 1e-9]


def budget_table(rows: list[dict], budget: float, metric: str, baseline: str, bound: float = 0.1) -> str:
    """Every method inside storable `budget` ± `bound` against the baseline, seed by seed. The baseline's row is
    its configuration with the best mean over seeds (one fixed configuration); the stricter per-seed best (the
    best of the baseline's configurations at each seed, which favours the baseline by picking on the test set)
    is given too. Differences are in points of accuracy (or perplexity), positive = the method is better."""
    better = (lambda a, b: a - b) if metric == "accuracy" else (lambda a, b: b - a)
    scale = SCALE.get(metric, 1.0)
    rows = in_budget(rows, budget, bound)
    seeds = sorted({r["seed"] for r in rows}, key=lambda s: -1 if s is None else s)
    by_label: dict[str, dict] = {}
    for r in rows:
        by_label.setdefault(r["label"], {})[r["seed"]] = r
    base = {lab: v for lab, v in by_label.items() if lab.split(":")[0] == baseline and len(v) == len(seeds)}
    title = f"storable {budget:g} ± {bound:g}"
    if not base:
        return f"\n{title}: no {baseline} configuration inside the budget at every seed"
    sign = 1 if metric == "accuracy" else -1
    best = max(base, key=lambda lab: sign * statistics.fmean(r[metric] for r in base[lab].values()))
    per_seed_best = {s: max((v[s][metric] for v in base.values()), key=lambda x: sign * x) for s in seeds}
    lines = [
        f"\n{title}: {baseline} row = {best} (best mean of {len(base)} configurations in the bound)",
        f"| config | storable bits | {metric} mean ± std | − {best}, per seed | mean ± std | ≥ at | "
        "− per-seed best, mean | ≥ at |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, v in by_label.items():
        if len(v) != len(seeds):
            continue
        vals = [scale * v[s][metric] for s in seeds]
        d = [scale * better(v[s][metric], base[best][s][metric]) for s in seeds]
        dp = [scale * better(v[s][metric], per_seed_best[s]) for s in seeds]
        m, sd = mean_std(vals)
        dm, dsd = mean_std(d)
        lines.append(
            f"| {label} | {statistics.fmean(x['storable_bits'] for x in v.values()):.3f} | {m:.2f} ± {sd:.2f} | "
            + " / ".join(f"{x:+.2f}" for x in d)
            + f" | {dm:+.2f} ± {dsd:.2f} | {sum(x >= -1e-9 for x in d)}/{len(d)} | {statistics.fmean(dp):+.2f} | "
            f"{sum(x >= -1e-9 for x in dp)}/{len(dp)} |"
        )
    return "\n".join(lines)


def table(rows: list[dict], model: str, metric: str, also_data: str | None) -> str:
    """Markdown table of the rows; classifiers also get NLL and ECE (calibration of the quantized model)."""
    fmt = {"perplexity": lambda v: f"{v:.2f}", "accuracy": lambda v: f"{100 * v:.2f}%"}.get(
        metric, lambda v: f"{v:.4f}"
    )
    also = f" {metric} on {also_data} |" if also_data else ""
    calib = {"accuracy": " NLL | ECE |", "kl_to_reference": " agreement |"}.get(metric, "")
    lines = [
        f"| {model} | nominal bits | storable bits | file MB | {metric} |{calib}{also} quantize s | peak RSS GB "
        "| eval s |",
        "|---|---|---|---|---|" + "---|" * (calib.count("|") + also.count("|")) + "---|---|---|",
    ]
    for r in rows:
        cells = ""
        if metric == "accuracy":
            cells = f" {r['nll']:.4f} | {r['ece']:.4f} |"
        elif metric == "kl_to_reference":
            cells = f" {100 * r['agreement']:.1f}% |"
        if also:  # a pooled row run without the second SPEC has none
            cells += f" {fmt(r[f'{metric}_also'])} |" if f"{metric}_also" in r else " — |"
        lines.append(
            f"| {r['label']} | {r['nominal_bits']:.3f} | {r['storable_bits']:.3f} | {file_mb(r)} | "
            f"{fmt(r[metric])} |{cells} "
            f"{r['quantize_seconds']:.0f} | {r['peak_rss_gb']:.2f} | {r['eval_seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], metric: str, title: str, path: Path) -> None:
    """Quality against storable bits, one marker series per method (fp32 as a horizontal line). With several
    seeds each point is a configuration's mean and its bar one standard deviation. A method run at storable
    budgets (one configuration per budget) is drawn as a line; a baseline's configurations as markers only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    scale = SCALE.get(metric, 1.0)
    by_method: dict[str, list[dict]] = {}
    for label in dict.fromkeys(r["label"] for r in rows):  # one point per configuration: the mean over seeds
        rs = [r for r in rows if r["label"] == label]
        m, sd = mean_std([scale * x[metric] for x in rs])
        if label == "fp32":
            ax.axhline(m, color="gray", ls="--", lw=1, label="fp32")
        else:
            bits = statistics.fmean(x["storable_bits"] for x in rs)
            by_method.setdefault(label.split(":")[0], []).append({"label": label, "bits": bits, "m": m, "sd": sd})
    order = ["fp32", "rtn", "gptq", "bayesq", "baq"]  # the same colour for a method in every plot
    for method in sorted(by_method, key=lambda m: (order.index(m) if m in order else len(order), m)):
        rs = sorted(by_method[method], key=lambda r: r["bits"])
        budgets = all(":storable" in r["label"] for r in rs)
        ax.errorbar([r["bits"] for r in rs], [r["m"] for r in rs], yerr=[r["sd"] for r in rs], marker="o",
                    ls="-" if budgets else "none", capsize=3, label=method)  # fmt: skip
    seeds = {r.get("seed") for r in rows if r["label"] != "fp32"}
    if metric != "accuracy":
        ax.set_yscale("log")
    ax.set_xlabel("storable bits per weight")
    ax.set_ylabel(
        {"accuracy": "accuracy (%)", "kl_to_reference": "KL(float ‖ quantized), 10⁻³ nats"}.get(metric, metric)
    )
    title = re.sub(r"(?<![\w.])[^\s:]*/([^\s/]+)", r"\1", title)  # paths by their last part: the title fits
    ax.set_title(title + (f" (mean ± std over {len(seeds)} calibration seeds)" if len(seeds) > 1 else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


if __name__ == "__main__":
    main()
