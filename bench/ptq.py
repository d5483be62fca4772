"""Post-training quantization methods side by side on a zoo model, each configuration in its own process (so
peak RSS is its own): quantize, save, evaluate; prints a markdown table, writes JSON and a plot of quality
against storable bits (`bayesquant bench ptq` runs this script).

    .venv/bin/python bench/ptq.py --model smollm2-135m --configs rtn:4:64 gptq:4:64 gptq:3:64:act
    .venv/bin/python bench/ptq.py --model digit-cnn --configs gptq:3:0:act baq:3:0:storable bayesq:3:0:storable

A config is METHOD:BITS:GROUP[:FLAG...] with GROUP 0 meaning per output channel, or `fp32` for the
unquantized model. Flags: `act` (--act-order), `noact` (--no-act-order), `storable` (BITS is a storable
budget: bayesq, baq), `mse` (--grid mse), `NAME=VALUE` (passed as --NAME VALUE, e.g. rounds=2). Peak RSS is
that of quantizing and saving (the evaluation's own peak is in the JSON). `--also-data SPEC` evaluates
every saved model on a second SPEC too (e.g. the off-domain `fortunes:test` for a language model).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bayesquant.paths import atomic_file, save_png

DEFAULT_DATA = {"smollm2-135m": "bbc-news:test", "minilm-bbc": "bbc-news:test", "resnet-fashion": "fashion-mnist:test"}
CLI = [sys.executable, "-m", "bayesquant.cli"]  # the bayesquant command of this interpreter


def also_evaluate(model_or_dir: str, spec: str, work: Path, slug: str) -> dict:
    """Evaluate a saved model (or a zoo key) on a second SPEC, e.g. off-domain text."""
    js = work / f"{slug}-also.json"
    cmd = [*CLI, "eval", "--model", model_or_dir, "--data", spec, "--json", str(js)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    r = json.loads(js.read_text())
    key = "perplexity" if "perplexity" in r else "accuracy"
    return {f"{key}_also": r[key], "also_data": spec, "also_eval_seconds": r["seconds"]}


def run_config(model: str, config: str, data: str, work: Path, extra: list[str], also: str | None = None) -> dict:
    slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", config.replace(":", "_"))  # a file name, whatever the flags hold
    js = work / f"{slug}.json"
    if config == "fp32":  # the unquantized reference row
        cmd = [*CLI, "eval", "--model", model, "--data", data, "--json", str(js)]
        cmd += [a for i, a in enumerate(extra) if "--max-windows" in extra[max(i - 1, 0) : i + 1]]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        r = json.loads(js.read_text())
        r |= {"nominal_bits": 32.0, "storable_bits": 32.0, "quantize_seconds": 0.0, "eval_seconds": r["seconds"]}
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
    parser.add_argument("--model", required=True)
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--data", help="evaluation SPEC (default: the model's test split)")
    parser.add_argument("--nsamples", help="calibration samples (default: the model's default)")
    parser.add_argument("--max-windows", help="language models: evaluate the first N windows only")
    parser.add_argument("--also-data", help="a second evaluation SPEC, e.g. fortunes:test (off-domain text)")
    parser.add_argument("--out", help="JSON output (default bench/out/ptq-MODEL.json; the plot next to it)")
    args = parser.parse_args()
    data = args.data or DEFAULT_DATA.get(args.model, "mnist:test")
    extra = ["--nsamples", args.nsamples] if args.nsamples else []
    extra += ["--max-windows", args.max_windows] if args.max_windows else []
    path = Path(args.out or f"bench/out/ptq-{args.model}.json")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            row = run_config(args.model, config, data, Path(tmp), extra, args.also_data)
            rows.append({**row, "label": config})
            with atomic_file(path, "w") as fh:  # after every row: an interrupted run keeps what it measured
                json.dump({"model": args.model, "data": data, "rows": rows}, fh, indent=2, default=str)
    metric = "perplexity" if "perplexity" in rows[0] else "accuracy"
    print(table(rows, args.model, metric, args.also_data))
    plot(rows, metric, f"{args.model} on {data}", path.with_suffix(".png"))


def table(rows: list[dict], model: str, metric: str, also_data: str | None) -> str:
    """Markdown table of the rows; classifiers also get NLL and ECE (calibration of the quantized model)."""
    fmt = (lambda v: f"{v:.2f}") if metric == "perplexity" else (lambda v: f"{100 * v:.2f}%")
    also = f" {metric} on {also_data} |" if also_data else ""
    calib = " NLL | ECE |" if metric == "accuracy" else ""
    lines = [
        f"| {model} | nominal bits | storable bits | {metric} |{calib}{also} quantize s | peak RSS GB | eval s |",
        "|---|---|---|---|" + "---|" * (calib.count("|") + also.count("|")) + "---|---|---|",
    ]
    for r in rows:
        cells = f" {r['nll']:.4f} | {r['ece']:.4f} |" if calib else ""
        cells += f" {fmt(r[f'{metric}_also'])} |" if also else ""
        lines.append(
            f"| {r['label']} | {r['nominal_bits']:.3f} | {r['storable_bits']:.3f} | {fmt(r[metric])} |{cells} "
            f"{r['quantize_seconds']:.0f} | {r['peak_rss_gb']:.2f} | {r['eval_seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], metric: str, title: str, path: Path) -> None:
    """Quality against storable bits, one marker series per method (fp32 as a horizontal line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    scale = 1.0 if metric == "perplexity" else 100.0
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        if r["label"] == "fp32":
            ax.axhline(scale * r[metric], color="gray", ls="--", lw=1, label="fp32")
        else:
            by_method.setdefault(r["label"].split(":")[0], []).append(r)
    for method, rs in by_method.items():
        rs = sorted(rs, key=lambda r: r["storable_bits"])
        ax.plot([r["storable_bits"] for r in rs], [scale * r[metric] for r in rs], "o-", label=method)
    if metric == "perplexity":
        ax.set_yscale("log")
    ax.set_xlabel("storable bits per weight")
    ax.set_ylabel(metric if metric == "perplexity" else "accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


if __name__ == "__main__":
    main()
