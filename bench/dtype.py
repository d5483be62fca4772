"""One model quantized in two floating dtypes: the zoo model cast to each (`loaded.module.to(dtype)`) goes through
the same quantization and is evaluated on the same split; prints a markdown table with each row's metrics and
time, and each dtype's top-1 agreement with the first one's quantized model, and writes JSON.

    .venv/bin/python bench/dtype.py --model digit-cnn --data mnist:test --configs gptq:4 bayesq:4:storable
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bayesquant.api import quantize
from bayesquant.config import QuantizeConfig
from bayesquant.data import load_dataset
from bayesquant.eval import classifier_metrics, predict_probs
from bayesquant.models import load_model
from bayesquant.nn.layers import set_dequant_cache
from bayesquant.paths import atomic_file


def parse_config(text: str) -> QuantizeConfig:
    """METHOD:BITS[:BUDGET], e.g. gptq:4 or bayesq:3.5:storable."""
    method, bits, *rest = text.split(":")
    return QuantizeConfig(method=method, bits=float(bits), **({"budget": rest[0]} if rest else {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digit-cnn", help="zoo key of a classifier")
    parser.add_argument("--data", default="mnist:test", help="labelled SPEC to evaluate on")
    parser.add_argument("--configs", nargs="+", default=["gptq:4", "bayesq:4:storable"], help="METHOD:BITS[:BUDGET]")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="torch dtype names")
    parser.add_argument("--out", default="bench/out/dtype.json")
    args = parser.parse_args()
    dtypes = []
    for name in args.dtypes:
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            parser.error(f"--dtypes {name}: not a floating torch dtype (float32, bfloat16, float16, float64)")
        dtypes.append((name, dtype))
    data = load_dataset(args.data)
    rows = []
    for text in args.configs:
        config, first = parse_config(text), None
        for name, dtype in dtypes:
            loaded = load_model(args.model)
            loaded.module.to(dtype)
            start = time.perf_counter()
            result = quantize(loaded, config)
            seconds = time.perf_counter() - start
            set_dequant_cache(result.model.module, True)
            probs = predict_probs(result.model, data)  # (1, N, C): scored and compared from one pass
            metrics, top1 = classifier_metrics(probs, data.labels), probs[0].argmax(1)
            first = top1 if first is None else first
            rows.append({"config": text, "dtype": name, "seconds": seconds, "accuracy": metrics["accuracy"],
                         "nll": metrics["nll"], "ece": metrics["ece"],
                         "agreement_with_first": float((top1 == first).float().mean())})  # fmt: skip
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    lines = [f"{args.model} on {args.data} ({machine})", "",
             f"| config | dtype | accuracy | NLL | ECE | agreement with {dtypes[0][0]} | quantize s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['config']} | {r['dtype']} | {100 * r['accuracy']:.2f}% | {r['nll']:.4f} | {r['ece']:.4f} "
                     f"| {100 * r['agreement_with_first']:.2f}% | {r['seconds']:.0f} |")  # fmt: skip
    print("\n".join(lines))
    with atomic_file(Path(args.out), "w") as fh:
        json.dump({"machine": machine, "args": vars(args), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
