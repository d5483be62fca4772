"""QBNN experiments on Dirty-MNIST: one configuration end to end, the 8→2-bit sweep, the PTQ baseline.

`run_config` = stage 1 (deterministic pretraining, or a given pretrained net) → stage 2 (quantized BNN training
with KL annealing) → freeze to the stored codes → T-sample predictive on Dirty-MNIST test → uncertainty report
→ packed save (bytes measured) → optional scatter plot. `sweep` shares one pretrained net per seed across all
its configurations (stage 1 does not depend on the quantizers).

>>> train, test = load_data(max_per_source=2000)  # doctest: +SKIP
>>> row = run_config(NetConfig("mlp"), QuantConfig("jq", 4, 4, 4), TrainConfig(epochs=2), train, test)  # doctest: +SKIP
>>> row["accuracy"], row["auroc_epistemic"], row["size_reduction"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bayesquant.bnn.qbnn import (
    QBNN,
    Granularity,
    NetConfig,
    QuantConfig,
    QuantMode,
    SigmaQuantizer,
    build_net,
    plot_uncertainty,
    predict_samples,
    pretrain,
    train_qbnn,
    uncertainty_report,
)
from bayesquant.bnn.qbnn_io import save_qbnn
from bayesquant.config import TrainConfig
from bayesquant.data.dirty_mnist import AmbiguousMNIST, DirtyMNIST, load_dirty_mnist

log = logging.getLogger(__name__)

__all__ = [
    "TrainConfig",
    "evaluate_model",
    "evaluate_qbnn",
    "load_data",
    "markdown_table",
    "pretrained_net",
    "ptq_baseline",
    "run_config",
    "sweep",
]


def load_data(
    ambiguous: AmbiguousMNIST | str | Path | None = None, max_per_source: int | None = None, progress: bool = True
) -> tuple[DirtyMNIST, DirtyMNIST]:
    """(train, test) Dirty-MNIST: MNIST + Ambiguous-MNIST for training; + Fashion-MNIST for testing."""
    if not isinstance(ambiguous, AmbiguousMNIST):
        from bayesquant.data.dirty_mnist import ambiguous_mnist

        ambiguous = ambiguous_mnist(path=ambiguous, progress=progress)
    train = load_dirty_mnist("train", ambiguous, max_per_source=max_per_source)
    test = load_dirty_mnist("test", ambiguous, max_per_source=max_per_source)
    return train, test


def pretrained_net(net_cfg: NetConfig, train: DirtyMNIST, tc: TrainConfig, progress: bool = True) -> nn.Sequential:
    """Stage 1: the deterministic net of `net_cfg`, initialised with `tc.seed`, trained on `train`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        net = build_net(net_cfg)
    pretrain(net, train.images, train.labels, epochs=tc.pretrain_epochs, lr=tc.pretrain_lr,
             batch_size=tc.batch_size, seed=tc.seed, progress=progress)  # fmt: skip
    return net


def evaluate_model(
    model: QBNN, test: DirtyMNIST, tc: TrainConfig, plot: str | Path | None, title: str
) -> dict[str, Any]:
    start = time.perf_counter()
    probs = predict_samples(model, test.images, tc.samples, seed=tc.seed)
    row: dict[str, Any] = uncertainty_report(probs, test.labels, test.source)
    row["eval_seconds"] = time.perf_counter() - start
    if plot:
        row["plot"] = str(plot_uncertainty(probs, test.source, plot, title=title))
    return row


def evaluate_qbnn(
    model: QBNN, test: DirtyMNIST, tc: TrainConfig, *, out: str | Path | None = None, plot: str | Path | None = None,
    overwrite: bool = False, extra: dict | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Save (to `out`, else a temporary directory: the size is always measured from written bytes), which freezes
    the model to its stored codes, then evaluate the frozen model on `test`."""
    if out is not None:
        size = save_qbnn(model, out, extra=extra, overwrite=overwrite)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            size = save_qbnn(model, Path(tmp) / "m", extra=extra)
    row = evaluate_model(model, test, tc, plot, f"{model.net_config.arch.value} {model.quant.label()}")
    return row | size


def run_config(
    net_cfg: NetConfig, quant: QuantConfig, tc: TrainConfig, train: DirtyMNIST, test: DirtyMNIST, *,
    pretrained: nn.Sequential | None = None, out: str | Path | None = None, plot: str | Path | None = None,
    overwrite: bool = False, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """One configuration end to end (see the module docstring); returns one flat result row."""
    start = time.perf_counter()
    net = pretrained if pretrained is not None else pretrained_net(net_cfg, train, tc, progress)
    model = QBNN.from_pretrained(net, net_cfg, quant, prior_std=tc.prior_std, init_std=tc.init_std)
    stats = train_qbnn(model, train.images, train.labels, epochs=tc.epochs, lr=tc.lr, batch_size=tc.batch_size,
                       kl_anneal=tc.kl_anneal, seed=tc.seed, draws=tc.draws, sigma_lr=tc.sigma_lr,
                       progress=progress)  # fmt: skip
    extra = {"train": tc.to_dict(), "stats": stats}
    row = evaluate_qbnn(model, test, tc, out=out, plot=plot, overwrite=overwrite, extra=extra)
    head = {"arch": net_cfg.arch.value, "activation": net_cfg.activation.value, "config": quant.label(),
            "seed": tc.seed} | quant.to_dict()  # fmt: skip
    return head | row | {"train_seconds": stats["seconds"], "seconds_per_epoch": stats["seconds_per_epoch"],
                         "seconds": time.perf_counter() - start}  # fmt: skip


def ptq_baseline(model: QBNN, bits: int = 8) -> QBNN:
    """Post-training quantization of a trained (float) BNN: per-tensor symmetric uniform `bits`-bit grids for
    both μ and σ (no log grid, no retraining): the naive baseline the paper compares against."""
    q = dataclasses.replace(
        model.quant, mode=QuantMode.VPQ, mu_bits=bits, sigma_bits=bits, sigma_quantizer=SigmaQuantizer.UNIFORM,
        granularity=Granularity.TENSOR, symmetric=True,
    )  # fmt: skip
    ptq = copy.deepcopy(model)
    ptq.set_quant(q)
    return ptq


def sweep(
    net_cfg: NetConfig, tc: TrainConfig, train: DirtyMNIST, test: DirtyMNIST, *, modes: Iterable[str] = ("vpq",
    "spq", "jq"), bits: Iterable[int] = (8, 7, 6, 5, 4, 3, 2), seeds: Iterable[int] = (0,), float_row: bool = True,
    base: QuantConfig | None = None, plot_dir: str | Path | None = None, progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every mode × bit-width (all three quantizers at the same width) × seed, plus a float BNN per seed.

    base: the other quantizer settings (σ quantizer, granularity, …). One stage-1 net per seed is shared.
    """
    base = base or QuantConfig()
    rows: list[dict[str, Any]] = []
    configs = [QuantConfig(QuantMode.FLOAT)] if float_row else []
    configs += [dataclasses.replace(base, mode=QuantMode(m), mu_bits=b, sigma_bits=b, sample_bits=b) for m in modes
                for b in bits]  # fmt: skip
    for seed in seeds:
        tcs = dataclasses.replace(tc, seed=seed)
        net = pretrained_net(net_cfg, train, tcs, progress)
        for quant in configs:
            plot = None if plot_dir is None else Path(plot_dir) / f"{net_cfg.arch.value}-{quant.slug()}-s{seed}.png"
            row = run_config(net_cfg, quant, tcs, train, test, pretrained=net, plot=plot, progress=progress)
            log.info("%s seed %d: accuracy %.4f", quant.label(), seed, row.get("accuracy", float("nan")))
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def _mean_std(values: list[float]) -> str:
    t = torch.tensor(values, dtype=torch.float64)
    if len(values) == 1:
        return f"{float(t[0]):.4f}"
    return f"{float(t.mean()):.4f} ± {float(t.std()):.4f}"


def markdown_table(rows: list[dict[str, Any]], group: tuple[str, ...] = ("arch", "activation", "config")) -> str:
    """Rows grouped by `group` (seeds pooled: mean ± standard deviation) as a markdown table."""
    cols = ("accuracy", "ece", "auroc_aleatoric", "auroc_epistemic", "size_reduction", "storable_bits",
            "seconds")  # fmt: skip
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(g, "") for g in group), []).append(r)
    head = [*group, "seeds", *cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, rs in groups.items():
        cells = [str(k) for k in key] + [str(len(rs))]
        for c in cols:
            vals = [float(r[c]) for r in rs if c in r and r[c] is not None]
            cells.append(_mean_std(vals) if vals else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
