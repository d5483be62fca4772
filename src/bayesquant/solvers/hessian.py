"""Accumulate the layer Hessian H = 2 X Xᵀ / N of a Linear or Conv2d layer's inputs (GPTQ eq. 1).

Inputs arrive batch by batch (`add_batch`); H is a running mean kept in float32, so the result does not
depend on how the calibration set is batched. Conv2d inputs are unfolded into (in/groups·kh·kw) columns, padded
as the layer pads them. A grouped convolution (groups > 1, e.g. depthwise) multiplies each group's rows with its
own input channels: every group's patches count as rows of X, so H is the mean of the groups' Hessians — one
matrix for all output rows, as GPTQ's solver and the packed format's one column order per layer need
(docs/methods.md, GPTQ).
"""

from __future__ import annotations

import torch
from torch import nn

from bayesquant.nn.patches import grouped_patches


def layer_inputs(layer: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """The rows of X for one batch: (n_rows, columns), columns = weight.flatten(1).shape[1]."""
    if isinstance(layer, nn.Conv2d):
        cols = grouped_patches(layer, inp)  # (b, groups, c/groups·kh·kw, L)
        return cols.permute(0, 3, 1, 2).reshape(-1, cols.shape[2])
    return inp.reshape(-1, inp.shape[-1])


class HessianAccumulator:
    """H = (2/N) Σ_n x_n x_nᵀ over the N input rows seen so far (a row = one token or one conv patch).

    GPTQ's reference counts N in sequences, not tokens; the scale of H cancels in the GPTQ update, and
    per-row averaging makes it comparable across layers and batch sizes.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        columns = layer.weight.flatten(1).shape[1]
        self.H = torch.zeros(columns, columns, dtype=torch.float32, device=layer.weight.device)
        self.n = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        x = layer_inputs(self.layer, inp.detach()).float()  # (rows, columns)
        rows = x.shape[0]
        self.H.mul_(self.n / (self.n + rows))
        self.n += rows
        self.H.addmm_(x.t(), x, alpha=2.0 / self.n)

    def hook(self, _module: nn.Module, args: tuple, _output: torch.Tensor) -> None:
        self.add_batch(args[0])
