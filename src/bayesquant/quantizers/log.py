"""Logarithmic quantizer for positive tensors (QBNN's B2 quantizer of σ, DESIGN.md §2).

A uniform grid on log x between each row's (or group's) min and max:

    step = (log max − log min) / (2ᵇ − 1),   code = clamp(round((log x − log min) / step), 0, 2ᵇ − 1),
    x_q = exp(log min + step · code)

so inside the fitted range the relative error is bounded: exp(−step/2) ≤ x_q / x ≤ exp(step/2). A row whose
values are all equal gets step = 1 (any step would do) and is reproduced by code 0. Codes are uint8.

>>> p = fit_log(torch.tensor([[0.01, 0.1, 1.0]]), 1)
>>> dequantize_log(quantize_log(torch.tensor([[0.01, 0.2, 1.0]]), p), p)
tensor([[0.0100, 1.0000, 1.0000]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bayesquant.quantizers._common import CODE_DTYPE, check_bits, check_matrix, work_dtype
from bayesquant.quantizers.groups import fit_groups

__all__ = ["LogParams", "dequantize_log", "fit_log", "fit_log_groups", "quantize_log"]


@dataclass(frozen=True)
class LogParams:
    """A grid exp(log_min + log_step · code); log_min, log_step: (rows, 1), (rows, n_groups) or broadcastable."""

    log_min: Tensor
    log_step: Tensor
    bits: int

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.log_min.shape != self.log_step.shape:
            raise ValueError(f"log_min {tuple(self.log_min.shape)} and log_step {tuple(self.log_step.shape)} differ")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1


def _check_positive(x: Tensor, name: str) -> None:
    if not bool((x > 0).all()):
        raise ValueError(
            f"{name}: the log quantizer needs strictly positive values (e.g. σ), got a minimum of "
            f"{float(x.min()):.4g}; use the uniform quantizer for signed data"
        )


def fit_log(w: Tensor, bits: int) -> LogParams:
    """Fit one log grid per row of positive w (rows, cols): log_min, log_step (rows, 1)."""
    x = check_matrix(w)
    bits = check_bits(bits)
    _check_positive(x, "w")
    lx = torch.log(x.to(work_dtype(x)))
    lo, hi = torch.aminmax(lx, dim=1, keepdim=True)  # (rows, 1)
    step = (hi - lo) / (2**bits - 1)
    step = torch.where(step > 0, step, torch.ones_like(step))
    return LogParams(log_min=lo, log_step=step, bits=bits)


def fit_log_groups(w: Tensor, bits: int, group_size: int | None) -> LogParams:
    """`fit_log` per group of `group_size` columns: (rows, n_groups); apply with `expand_groups`."""
    return fit_groups(fit_log, w, bits, group_size)


def quantize_log(w: Tensor, params: LogParams) -> Tensor:
    """Codes (uint8, in [0, 2ᵇ − 1]) of positive w on the grid `params` (broadcast against w)."""
    _check_positive(w, "w")
    lx = torch.log(w.to(params.log_min.dtype))
    return torch.clamp(torch.round((lx - params.log_min) / params.log_step), 0, params.maxq).to(CODE_DTYPE)


def dequantize_log(codes: Tensor, params: LogParams) -> Tensor:
    """exp(log_min + log_step · codes), in the parameters' dtype."""
    return torch.exp(params.log_min + params.log_step * codes.to(params.log_step.dtype))
