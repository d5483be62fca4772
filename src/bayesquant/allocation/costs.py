"""Cost tables cost[g, b] from a weight posterior (closed form) or from calibration batches (Monte Carlo).

Groups (`granularity`): "layer" (one per module), "channel" (output row), "column" (input column of the
(out, in·kh·kw) weight), "block" (a block of `group_size` consecutive weights of a row). At every candidate
width b the posterior mean μ of each module is quantized with the chosen codebook (per row, or per block of
`group_size` columns) and e = μ − Q_b(μ) is reduced over the group by one of the metrics:

- "expected_loss" — BayesQ's posterior-expected increase of the training loss, to second order with the
  diagonal curvature h = 1/σ² − λ of the loss (the data's part of the Laplace precision,
  `Posterior.loss_curvature`): Σ_i h_i·E_q[(w_i − Q_b(μ_i))²] = Σ_i h_i (σ_i² + e_i²);
- "expected_mse" — the posterior-expected, precision-weighted distortion:
  Σ_i (1/σ_i²)·E_q[(w_i − Q_b(μ_i))²] = Σ_i (1 + e_i²/σ_i²)  (E_q[(w − q)²] = σ² + (μ − q)²). Where the prior
  dominates the precision (a confident classifier fitted on little data) this is λ·Σ e² + const, the plain
  weight MSE, blind to how much each weight matters;
- "hessian" — GPTQ-style column losses Σ_i H_jj·e_i² with H_jj the diagonal of the layer Hessian of the weight's
  input column j (taken from `hessians`, else from the posterior precision: for a `laplace-layerwise` posterior
  that is exactly diag(2XXᵀ) + λ);
- "informativeness" — paper (c) eq. 7: τ = Σ_i c_i·e_i²/σ_i² with c_i = info_i / Σ_group info (info = |μ|/σ).

`overhead[g, b]` prorates the stored grid parameters over the group's weights: uniform and quantile store two
float16 numbers per grid (32 bits), Lloyd–Max a float16 codebook of 2ᵇ entries per grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from bayesquant.allocation.table import DEFAULT_BITS, CostTable
from bayesquant.errors import UserError
from bayesquant.posterior.base import Posterior
from bayesquant.quantizers import QUANTIZERS

GRANULARITIES = ("layer", "channel", "column", "block")
METRICS = ("expected_loss", "expected_mse", "hessian", "informativeness")


def _grid_bits(quantizer: str, bits: int) -> float:
    """Stored bits of one grid's parameters."""
    return 16.0 * 2**bits if quantizer == "lloyd_max" else 32.0


def quantization_error(mu: torch.Tensor, bits: int, quantizer: str, group_size: int | None) -> torch.Tensor:
    """μ − Q_b(μ) for a (rows, cols) weight, grids per row (or per block of `group_size` columns)."""
    fit = QUANTIZERS.get(quantizer)
    kw = {"group_size": group_size} if quantizer == "uniform" else {}
    if quantizer != "uniform" and group_size:
        rows, cols = mu.shape
        g = group_size
        if cols % g:
            raise UserError(f"--group-size {g}: must divide the layer width {cols} for the {quantizer} quantizer")
        blocks = mu.reshape(rows * cols // g, g)
        return (blocks - fit(blocks, bits, **kw).dequantized).reshape(rows, cols)
    return mu - fit(mu, bits, **kw).dequantized


def _reduce(values: torch.Tensor, granularity: str, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum a (rows, cols) per-weight quantity over each group: (values per group, index of each group)."""
    rows, cols = values.shape
    if granularity == "layer":
        return values.sum().reshape(1), torch.tensor([-1])
    if granularity == "channel":
        return values.sum(1), torch.arange(rows)
    if granularity == "column":
        return values.sum(0), torch.arange(cols)
    g = group_size or cols
    if cols % g:
        raise UserError(f"--group-size {g}: must divide the layer width {cols} for block groups")
    per = values.reshape(rows, cols // g, g).sum(2).flatten()
    return per, torch.arange(per.numel())


def posterior_cost_table(
    post: Posterior,
    *,
    granularity: str = "layer",
    bits: Iterable[int] = DEFAULT_BITS,
    metric: str = "expected_mse",
    quantizer: str = "uniform",
    group_size: int | None = None,
    hessians: dict[str, torch.Tensor] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> CostTable:
    """The closed-form cost table of `post` (see the module docstring); also records each group's
    informativeness by mean (paper (c) eq. 2) and by entropy (eq. 15) for Quantile Inform."""
    if granularity not in GRANULARITIES:
        raise UserError(f"--granularity {granularity!r}: unknown; valid: {', '.join(GRANULARITIES)}")
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r}: unknown; valid: {', '.join(METRICS)}")
    QUANTIZERS.get(quantizer)
    bits = tuple(sorted(set(int(b) for b in bits)))
    if not bits or bits[0] < 1 or bits[-1] > 8:
        raise UserError(f"--bits {bits}: candidate widths must lie in 1..8")
    costs, sizes, overheads, modules, index, info_mean, info_entropy = [], [], [], [], [], [], []
    names = post.names if progress is None else progress(post.names)
    for name in names:
        mu = post.mean[name].double().flatten(1) if post.mean[name].dim() > 1 else post.mean[name].double()[None]
        var = post.var[name].double().reshape(mu.shape)
        rows, cols = mu.shape
        prec = var.reciprocal()
        info = mu.abs() * prec.sqrt()  # |μ|/σ, eq. 1
        weight = prec  # 1/σ² (expected_mse; informativeness, with c_i normalised per group below)
        if metric == "expected_loss":
            weight = post.loss_curvature(name).double().reshape(mu.shape)
        if metric == "hessian" and hessians and name in hessians:
            weight = hessians[name].double().reshape(1, cols).expand(rows, cols)
        ones, idx = _reduce(torch.ones_like(mu), granularity, group_size)
        table_cols = []
        for b in bits:
            err2 = quantization_error(mu.float(), b, quantizer, group_size).double() ** 2
            if metric == "informativeness":
                num, _ = _reduce(info * weight * err2, granularity, group_size)
                den, _ = _reduce(info, granularity, group_size)
                table_cols.append(num / den.clamp_min(1e-300))
            elif metric == "expected_mse":
                per, _ = _reduce(weight * err2, granularity, group_size)
                table_cols.append(per + ones)  # Σ (1 + e²/σ²)
            elif metric == "expected_loss":
                per, _ = _reduce(weight * (var + err2), granularity, group_size)
                table_cols.append(per)  # Σ h (σ² + e²)
            else:
                per, _ = _reduce(weight * err2, granularity, group_size)
                table_cols.append(per)
        costs.append(torch.stack(table_cols, 1))
        sizes.append(ones)
        grid = group_size or cols  # weights per grid
        overheads.append(ones[:, None] * torch.tensor([_grid_bits(quantizer, b) / grid for b in bits]))
        modules += [name] * len(ones)
        index.append(idx)
        s_info, _ = _reduce(info, granularity, group_size)
        info_mean.append(s_info / ones)  # eq. 2
        info_entropy.append(_entropy_confidence(info, granularity, group_size))  # eq. 15
    return CostTable(
        torch.cat(costs), torch.cat(sizes), bits, torch.cat(overheads), modules, torch.cat(index), granularity,
        info={"mean": torch.cat(info_mean), "entropy": torch.cat(info_entropy)},
        meta={"metric": metric, "quantizer": quantizer, "group_size": group_size, "posterior": post.meta},
    )  # fmt: skip


def _entropy_confidence(info: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """Paper (c) eq. 15 per group: p = info/Σ info, H = −Σ p log p, I = 1 − H / log n."""
    total, _ = _reduce(info, granularity, group_size)
    n, _ = _reduce(torch.ones_like(info), granularity, group_size)
    # Σ p log p = Σ (x/T) log(x/T) = (Σ x log x)/T − log T
    xlogx, _ = _reduce(torch.where(info > 0, info * info.clamp_min(1e-300).log(), 0.0), granularity, group_size)
    T = total.clamp_min(1e-300)
    H = -(xlogx / T - T.log())
    return torch.where(n > 1, 1 - H / n.clamp_min(2).log(), torch.ones_like(H))


# ---------------------------------------------------------------- Monte-Carlo task loss (layer granularity)
TaskLoss = Callable[[nn.Module], float]


@torch.no_grad()
def mc_task_loss_table(
    model: nn.Module,
    post: Posterior,
    modules: dict[str, nn.Module],
    loss: TaskLoss,
    *,
    bits: Iterable[int] = DEFAULT_BITS,
    quantizer: str = "uniform",
    group_size: int | None = None,
    samples: int = 1,
    seed: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> CostTable:
    """cost[l, b] = E[loss(model with layer l at Q_b(μ_l))] − E[loss(model)], the expectation over `samples`
    draws of the other layers' weights from the posterior (samples=1: the posterior mean, no draw); floored at
    0, non-increasing in b, ties broken by the closed-form expected loss (`_resolve_noise`)."""
    post.check_model(modules)
    bits = tuple(sorted(set(int(b) for b in bits)))
    gen = torch.Generator().manual_seed(seed)
    draws = [post.mean] if samples <= 1 else [post.sample(gen) for _ in range(samples)]
    base = 0.0
    for w in draws:
        with post.weights_in(modules, w):
            base += loss(model) / len(draws)
    cost = torch.zeros(len(modules), len(bits), dtype=torch.float64)
    for li, name in enumerate(modules if progress is None else progress(list(modules))):
        mu = post.mean[name].flatten(1)
        for k, b in enumerate(bits):
            q = (mu - quantization_error(mu, b, quantizer, group_size)).reshape(post.mean[name].shape)
            total = 0.0
            for w in draws:
                with post.weights_in(modules, {**w, name: q}):
                    total += loss(model) / len(draws)
            cost[li, k] = max(total - base, 0.0)
    closed = posterior_cost_table(post, granularity="layer", bits=bits, metric="expected_loss", quantizer=quantizer,
                                  group_size=group_size)  # fmt: skip
    rows = torch.tensor([closed.modules.index(n) for n in modules])
    cost = _resolve_noise(cost, closed.cost[rows])
    sizes = torch.tensor([float(post.mean[n].numel()) for n in modules])
    overhead = torch.stack(
        [torch.tensor([_grid_bits(quantizer, b) * post.mean[n].shape[0] * _grids_per_row(post, n, group_size)
                       for b in bits]) for n in modules]
    )  # fmt: skip
    info = {k: v[rows] for k, v in closed.info.items()}  # for Quantile Inform
    return CostTable(cost, sizes, bits, overhead, list(modules), None, "layer", info=info,
                     meta={"metric": "mc_task_loss", "samples": samples, "base_loss": base,
                           "quantizer": quantizer, "group_size": group_size})  # fmt: skip


def _resolve_noise(cost: torch.Tensor, closed: torch.Tensor) -> torch.Tensor:
    """A measured table made usable by the knapsack. A wider grid is never counted worse than a narrower one
    (the running minimum over widths: a measured rise is noise), and where the measurement cannot tell widths
    apart (the calibration loss moved by nothing, e.g. at every width above 2 on a memorising classifier) the
    closed-form expected loss orders them, with a weight far below any measured difference — without it the
    knapsack, which takes only upgrades that lower the cost, leaves the budget unspent (digit-cnn, --bits 4:
    2.29 stored bits). `closed`: the expected-loss table of the same layers and widths."""
    cost = torch.cummin(cost, dim=1).values
    closed = closed - closed.min(1, keepdim=True).values  # the part that changes with the width
    scale = float(cost.abs().max()) or 1.0
    return cost + 1e-9 * scale * closed / float(closed.max() or 1.0)


def nll_loss(batches: Iterable[Any], likelihood: str) -> TaskLoss:
    """A task loss for `mc_task_loss_table`: the mean per-example negative log-likelihood over `batches`
    (the batch convention of `bayesquant.posterior.likelihood`)."""
    from bayesquant.posterior.likelihood import Likelihood, nll

    lik = Likelihood.parse(likelihood)
    batches = list(batches)

    @torch.no_grad()
    def loss(model: nn.Module) -> float:
        model.eval()
        total, n = 0.0, 0
        for batch in batches:
            per = nll(model, batch, lik)
            total, n = total + float(per.sum()), n + per.numel()
        return total / max(n, 1)

    return loss


def _grids_per_row(post: Posterior, name: str, group_size: int | None) -> int:
    cols = post.mean[name][0].numel()
    return math.ceil(cols / group_size) if group_size else 1
