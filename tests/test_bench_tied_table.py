"""bench/tied_table.py: the per-row KL cost and the allocation that meets a mean width."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

spec = importlib.util.spec_from_file_location("bench_tied", Path(__file__).parents[1] / "bench" / "tied_table.py")
tied = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tied)


def test_kl_cost_of_a_row_is_the_kl_of_moving_that_row_alone():
    torch.manual_seed(0)
    head = nn.Linear(4, 9, bias=False)
    model = nn.Sequential(nn.Linear(3, 4), head)
    W = head.weight.detach().clone()
    noise = {b: W + torch.randn_like(W) / b for b in tied.WIDTHS}  # a wider row errs less
    x = torch.randn(5, 3)
    costs = tied.kl_costs(model, head, W, noise, [((x,), {})])
    h = model[0](x).detach()
    p = torch.log_softmax(h @ W.T, -1)
    for j, b in enumerate(tied.WIDTHS):
        for v in (0, 7):
            moved = W.clone()
            moved[v] = noise[b][v]
            q = torch.log_softmax(h @ moved.T, -1)
            kl = (p.exp() * (p - q)).sum()
            torch.testing.assert_close(costs[v, j].float(), kl, rtol=1e-3, atol=1e-6)
    exact = tied.kl_costs(model, head, W, dict.fromkeys(tied.WIDTHS, W), [((x,), {})])
    assert torch.equal(exact, torch.zeros_like(exact))


def test_per_row_widths_meet_the_stored_size_with_grids_and_width_map_counted():
    bits = torch.tensor(tied.WIDTHS, dtype=torch.float64)
    scale = torch.tensor([100.0, 1.0, 1.0, 0.01])[:, None]
    costs = scale * 4.0**-bits  # each bit quarters a row's cost; row 0 matters most, row 3 least
    dim = tied.GRID_BITS + tied.MAP_BITS  # a row's grid and width then cost one bit per entry
    widths = tied.per_row_widths(costs, 5.5, 3, dim)  # 4.5 code bits per entry: 18 bits over the four rows
    assert widths.tolist() == [7, 4, 4, 3]  # the cheapest split of 18 bits with no row below 3
