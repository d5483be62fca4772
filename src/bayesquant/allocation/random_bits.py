"""Random Bits (paper (c) §4.3, eqs. 4–10; appendix B): widths as random variables optimised by gradient descent.

Each group j has logits φ_j over the candidate widths, P[b_j = i] = softmax(φ_j)_i (eq. 4). The loss (eq. 9)

    L(Φ) = Σ_j Σ_i τ_{j,i} P[b_j = i] + η (E[b_mean] − γ)²,   E[b_mean] = Σ_j |l_j| Σ_i i P[b_j = i] / |W|  (eq. 8)

trades the expected quantization error τ (eq. 7: informativeness-weighted, σ-normalised squared error — the
cost table's entries) against the distance of the expected mean width from the target γ. Adam, lr 10⁻²,
1000 steps, η = 3·10³ (appendix B). The widths are the rounded expectations b̂_j = round(Σ_i i P[b_j = i])
(eq. 10), snapped to the nearest allowed candidate. Choices of ours (the paper is silent): φ starts at 0
(uniform over the allowed widths); τ is divided by its mean so that η keeps the paper's meaning whatever
the scale of the errors; if the rounded widths overshoot the budget, the groups whose downgrade costs the
least per saved bit are lowered one step at a time until it fits, and budget left unspent by the rounding
goes to one-step upgrades by the knapsack rule (the paper reports the mean it reaches: 3.95 for 4).
The interval updates of eqs. 11–13 belong to the quantizer's range, not to the allocation, and are not part of
this allocator.
"""

from __future__ import annotations

from typing import Any

import torch

from bayesquant.allocation.allocators import ALLOCATORS, _fill_single_upgrades
from bayesquant.allocation.table import CostTable


@ALLOCATORS.decorator("random_bits")
def random_bits(
    table: CostTable,
    units: torch.Tensor,
    mask: torch.Tensor,
    total: float,
    *,
    steps: int = 1000,
    lr: float = 1e-2,
    eta: float = 3e3,
    seed: int = 0,
    **_: Any,
) -> torch.Tensor:
    G, B = table.cost.shape
    n = table.sizes
    # the budget as a target mean of the counted units per weight, and each width's units per weight
    per_weight = units / n[:, None]  # (G, B): b (nominal) or b + overhead/n (storable)
    gamma = total / float(n.sum())
    tau = table.cost / table.cost.mean().clamp_min(1e-300)
    gen = torch.Generator().manual_seed(seed)
    phi = (1e-3 * torch.randn(G, B, generator=gen, dtype=torch.float64)).requires_grad_(True)
    neg = torch.where(mask, 0.0, float("-inf")).double()
    opt = torch.optim.Adam([phi], lr=lr)
    frac = n / n.sum()
    for _ in range(steps):
        p = torch.softmax(phi + neg, dim=1)  # (G, B), eq. 4
        mean_bits = (frac * (p * per_weight).sum(1)).sum()  # eq. 8 in expectation
        loss = (tau * p).sum() + eta * (mean_bits - gamma) ** 2  # eq. 9
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = torch.softmax(phi + neg, dim=1)
        expected = (p * table.widths[None, :]).sum(1)  # eq. 10 before rounding
        rounded = expected.round()
        dist = (table.widths[None, :] - rounded[:, None]).abs() + torch.where(mask, 0.0, float("inf"))
        choice = dist.argmin(1)
    choice = _downgrade_to_fit(table, units, mask, total, choice)
    choice = _fill_single_upgrades(table, units, mask, total, choice)  # rounding down can leave budget unspent
    random_bits.last_extra = {"expected_bits": expected.tolist(), "final_loss": float(loss.detach())}
    return choice


def _downgrade_to_fit(
    table: CostTable, units: torch.Tensor, mask: torch.Tensor, total: float, choice: torch.Tensor
) -> torch.Tensor:
    """Lower groups one allowed step at a time, least cost increase per saved unit first, until the budget fits."""
    choice = choice.clone()
    B = mask.shape[1]
    cols = torch.arange(B)[None, :]
    for _ in range(B):
        excess = float(units.gather(1, choice[:, None]).sum()) - total
        if excess <= 1e-9:
            break
        prev = torch.where(mask & (cols < choice[:, None]), cols, -1).max(1).values
        g = (prev >= 0).nonzero()[:, 0]
        if len(g) == 0:
            break
        saved = units[g, choice[g]] - units[g, prev[g]]
        worse = table.cost[g, prev[g]] - table.cost[g, choice[g]]
        order = torch.argsort(worse / saved.clamp_min(1e-300), stable=True)
        g, saved = g[order], saved[order]
        n = int(torch.searchsorted(torch.cumsum(saved, 0), torch.tensor(excess, dtype=saved.dtype))) + 1
        choice[g[:n]] = prev[g[:n]]  # the cheapest downgrades that together remove the excess
    return choice
