"""Where a tied embedding table loses when it is rounded, and what one width per token would win: the float model
with only its tied table (input embeddings and output layer, e.g. SmolLM2's) rounded, evaluated on the first
`--max-windows` windows of each SPEC. Prints a markdown table and writes JSON.

    .venv/bin/python bench/tied_table.py --model smollm2-135m --bits 4 --max-windows 40

Rows (rounded by GPTQ for the output layer unless said otherwise: act-order, Hessian of its inputs on `--nsamples`
calibration windows of bbc-news:train, what `--embedding-bits` does with a tied table):
- `BITS`, `BITS g64`: one width for every row, one grid per row or per 64 entries, read by both sides;
- `BITS, output layer only` / `lookup only`: the same table read by one side, the other reading the float table;
  `rounded to nearest, lookup only`: the lookup reading the table an untied one would get (nearest, `mse` grids);
- `widths by KL, S bits per entry`: one width per row (token) from 2..8 bits, at least `--min-bits`, chosen by the
  knapsack allocator (`bayesquant.allocation`) at a stored size of S bits per entry: codes, each row's grid (two
  float16 numbers) and each row's width (3 bits); by default S is the size of the `BITS` table and of the
  `BITS g64` table. Each row v costs, at width b, Σ_t KL(p_t ‖ p_t with logit v moved by h_t·(Q_b(W)_v − W_v)),
  summed over the positions t of the first `--kl-windows` calibration windows (h_t the output layer's input, p_t
  the float model's prediction).

The per-row widths are evaluated as float tables: the packed format has no per-row width classes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from bayesquant.allocation import Budget, CostTable, allocate
from bayesquant.data.calibration import calibration_batches
from bayesquant.eval import evaluate
from bayesquant.models import load_model
from bayesquant.paths import atomic_file
from bayesquant.solvers.embedding import embedding_targets, output_hessian, quantize_embedding

WIDTHS = (2, 3, 4, 5, 6, 7, 8)
GRID_BITS = 32  # a row's grid: float16 scale and zero
MAP_BITS = math.ceil(math.log2(len(WIDTHS)))  # a row's width, in a map of the rows


def tied_table(model: nn.Module) -> tuple[nn.Embedding, nn.Linear]:
    """The model's one tied table and the output layer that reads it."""
    tied = [(t.module, t.tied) for t in embedding_targets(model).values() if t.tied]
    if len(tied) != 1 or len(tied[0][1]) != 1:
        raise SystemExit(f"--model: needs exactly one embedding table tied to one output layer, found {tied}")
    emb, (head,) = tied[0]
    return emb, model.get_submodule(head)


@torch.no_grad()
def kl_costs(model: nn.Module, head: nn.Linear, W: torch.Tensor, tables: dict, batches: list) -> torch.Tensor:
    """(rows, len(WIDTHS)): Σ_t KL(p_t ‖ p_t with one row's logit moved by its rounding error), per row and width."""
    hs = []
    hook = head.register_forward_hook(lambda mod, args, out: hs.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        for args, kwargs in batches:
            model(*args, **kwargs)
    finally:
        hook.remove()
    h = torch.cat(hs).float()
    lse = torch.cat([torch.logsumexp(h[i : i + 512] @ W.T, 1) for i in range(0, len(h), 512)])
    costs = torch.zeros(W.shape[0], len(WIDTHS), dtype=torch.float64)
    for j, bits in enumerate(tqdm(WIDTHS, desc="KL costs", unit="width")):
        D = tables[bits] - W
        for s in range(0, W.shape[0], 4096):
            p = (h @ W[s : s + 4096].T - lse[:, None]).exp()
            dz = h @ D[s : s + 4096].T  # the logit error of each row at each position
            costs[s : s + 4096, j] = (torch.log1p(p * torch.expm1(dz)) - p * dz).sum(0).double()
    return costs


def per_row_widths(costs: torch.Tensor, storable: float, min_bits: int, dim: int) -> torch.Tensor:
    """(rows,) widths from WIDTHS, at least `min_bits`, minimising Σ cost (the project's knapsack allocator) at a
    stored size of `storable` bits per entry: codes, each row's grid (two float16) and its width (MAP_BITS)."""
    table = CostTable(costs, torch.full((len(costs),), float(dim)), WIDTHS, overhead=torch.tensor(GRID_BITS + MAP_BITS))
    return allocate(table, Budget(storable, "storable"), "knapsack", min_bits=min_bits).bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="zoo KEY or directory of a model with a tied table")
    parser.add_argument("--data", nargs="+", default=["bbc-news:test", "fortunes:test"], help="evaluation SPECs")
    parser.add_argument("--bits", type=int, default=4, help="the uniform rows' width")
    parser.add_argument("--storable", type=float, nargs="+", help="bits per entry of the per-row tables "
                        "(codes, grids, widths; default: the sizes of the BITS and BITS g64 tables)")  # fmt: skip
    parser.add_argument("--min-bits", type=int, default=3, help="narrowest row width of the per-row rows")
    parser.add_argument("--max-windows", type=int, default=40, help="evaluate the first N windows of each SPEC")
    parser.add_argument("--nsamples", type=int, default=16, help="calibration windows (bbc-news:train)")
    parser.add_argument("--kl-windows", type=int, default=8, help="calibration windows for the KL costs")
    parser.add_argument("--out", help="JSON output (default bench/out/tied-table-MODEL.json)")
    args = parser.parse_args()
    base = load_model(args.model)
    emb, head = tied_table(base.module)
    W = emb.weight.detach().float().clone()
    batches = calibration_batches(base, None, args.nsamples, 512, 0)
    t = time.perf_counter()
    H = output_hessian(base.module, head, batches)
    tables = {b: quantize_embedding(emb, b, None, H).dequantize().float() for b in WIDTHS}  # as --embedding-bits
    g64 = quantize_embedding(emb, args.bits, 64, H).dequantize().float()
    nearest = quantize_embedding(emb, args.bits).dequantize().float()  # an untied table's rounding
    costs = kl_costs(base.module, head, W, tables, batches[: args.kl_windows])
    print(f"Hessian, roundings and KL costs: {time.perf_counter() - t:.0f} s")

    rows = [("float", W, W, None), (f"{args.bits} bits", tables[args.bits], tables[args.bits], None),
            (f"{args.bits} bits g64", g64, g64, None),
            (f"{args.bits} bits, output layer only", W, tables[args.bits], None),
            (f"{args.bits} bits, lookup only", tables[args.bits], W, None),
            (f"{args.bits} bits rounded to nearest, lookup only", nearest, W, None)]  # fmt: skip
    dim = W.shape[1]
    for storable in args.storable or [args.bits + GRID_BITS / dim, args.bits + GRID_BITS / 64]:
        widths = per_row_widths(costs, storable, args.min_bits, dim)
        mixed = torch.empty_like(W)
        for bits in WIDTHS:
            mixed[widths == bits] = tables[bits][widths == bits]
        counts = {bits: int((widths == bits).sum()) for bits in WIDTHS}
        name = f"widths by KL, {storable:.3f} bits per entry (mean width {widths.double().mean():.3f})"
        rows.append((name, mixed, mixed, counts))

    path = Path(args.out or f"bench/out/tied-table-{Path(args.model).name}.json")
    results = []
    for name, lookup, output, counts in rows:
        model = copy.deepcopy(base)  # the two sides untied, each with its own float table
        model.module.get_submodule(_name(base.module, emb)).weight = nn.Parameter(lookup.clone())
        model.module.get_submodule(_name(base.module, head)).weight = nn.Parameter(output.clone())
        ppl = {spec: evaluate(model, spec, max_windows=args.max_windows)["perplexity"] for spec in args.data}
        results.append({"row": name, "perplexity": ppl, "rows_per_width": counts})
        print(results[-1], flush=True)
        with atomic_file(path, "w") as fh:
            settings = {"model": args.model, "max_windows": args.max_windows, "nsamples": args.nsamples}
            settings |= {"kl_windows": args.kl_windows, "min_bits": args.min_bits}  # the per-row rows
            json.dump({**settings, "rows": results}, fh, indent=2)
    print("\n| tied table | " + " | ".join(args.data) + " | rows per width |\n" + "|---" * (len(args.data) + 2) + "|")
    float_ppl = results[0]["perplexity"]
    for r in results:
        cells = [f"{v:.3f} ({100 * (v / float_ppl[s] - 1):+.1f} %)" for s, v in r["perplexity"].items()]
        widths = ", ".join(f"{b}: {n}" for b, n in (r["rows_per_width"] or {}).items() if n) or "—"
        print(f"| {r['row']} | " + " | ".join(cells) + f" | {widths} |")


def _name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


if __name__ == "__main__":
    main()
