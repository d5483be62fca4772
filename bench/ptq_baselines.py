"""RTN and GPTQ baselines on a zoo model, each configuration in its own process (so peak RSS is its own):
quantize, save, evaluate; prints a markdown table and writes JSON.

    .venv/bin/python bench/ptq_baselines.py --model smollm2-135m --configs rtn:4:64 gptq:4:64 gptq:3:64:act
    .venv/bin/python bench/ptq_baselines.py --model digit-cnn --configs rtn:4:0 gptq:4:0 rtn:3:0 gptq:3:0

A config is METHOD:BITS:GROUP[:act] with GROUP 0 meaning per output channel, or `fp32` for the unquantized
model. Peak RSS is that of quantizing and saving (the evaluation's own peak is in the JSON).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bayesquant.paths import atomic_file

DEFAULT_DATA = {"smollm2-135m": "bbc-news:test", "minilm-bbc": "bbc-news:test", "resnet-fashion": "fashion-mnist:test"}
CLI = [sys.executable, "-m", "bayesquant.cli"]  # the bayesquant command of this interpreter


def run_config(model: str, config: str, data: str, work: Path, extra: list[str]) -> dict:
    js = work / f"{config.replace(':', '_')}.json"
    if config == "fp32":  # the unquantized reference row
        cmd = [*CLI, "eval", "--model", model, "--data", data, "--json", str(js)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        r = json.loads(js.read_text())
        return r | {"nominal_bits": 32.0, "storable_bits": 32.0, "quantize_seconds": 0.0, "eval_seconds": r["seconds"]}
    method, bits, group, *flags = config.split(":")
    out = work / config.replace(":", "_")
    cmd = [*CLI, "quantize", "--model", model, "--method", method, "--bits", bits, "--out", str(out)]
    cmd += ["--eval", data, "--json", str(js), "--overwrite", *extra]
    if group != "0":
        cmd += ["--group-size", group]
    if "act" in flags:
        cmd.append("--act-order")
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(js.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--data", help="evaluation SPEC (default: the model's test split)")
    parser.add_argument("--nsamples", help="calibration samples (default: the model's default)")
    parser.add_argument("--out", help="JSON output (default bench/out/ptq-MODEL.json)")
    args = parser.parse_args()
    data = args.data or DEFAULT_DATA.get(args.model, "mnist:test")
    extra = ["--nsamples", args.nsamples] if args.nsamples else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            rows.append({**run_config(args.model, config, data, Path(tmp), extra), "label": config})
    metric = "perplexity" if "perplexity" in rows[0] else "accuracy"
    lines = [
        f"| {args.model} | nominal bits | storable bits | {metric} | quantize s | peak RSS GB | eval s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = f"{r[metric]:.2f}" if metric == "perplexity" else f"{100 * r[metric]:.2f}%"
        lines.append(
            f"| {r['label']} | {r['nominal_bits']:.3f} | {r['storable_bits']:.3f} | {value} "
            f"| {r['quantize_seconds']:.0f} | {r['peak_rss_gb']:.2f} | {r['eval_seconds']:.0f} |"
        )
    print("\n".join(lines))
    path = Path(args.out or f"bench/out/ptq-{args.model}.json")
    with atomic_file(path, "w") as fh:
        json.dump({"model": args.model, "data": data, "rows": rows}, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
