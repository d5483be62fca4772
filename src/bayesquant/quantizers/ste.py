"""Straight-through estimator (Bengio et al., 2013), as used for quantization-aware BNN training (QBNN).

The forward pass uses the quantized value, the backward pass treats quantization as the identity:
ste(w, w_q) = w + (w_q − w).detach(), so ∂ste/∂w = I.

>>> w = torch.tensor([0.3, -1.2], requires_grad=True)
>>> fake_quant_ste(w, 2).sum().backward()
>>> w.grad
tensor([1., 1.])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bayesquant.quantizers.kinds import QUANTIZERS

__all__ = ["fake_quant_ste", "ste"]


def ste(w: Tensor, w_q: Tensor) -> Tensor:
    """w_q in the forward pass, gradient passed straight through to w (same shape as w)."""
    return w + (w_q - w).detach()


def fake_quant_ste(w: Tensor, bits: int, kind: str = "uniform", weights: Tensor | None = None, **kw: Any) -> Tensor:
    """Quantize w with the registered `kind` (one grid per row: w is viewed as (shape[0], −1); a 0-/1-D w as one
    row) and return it with an identity gradient w.r.t. w. Keywords go to the kind's fit function."""
    fit = QUANTIZERS.get(kind)
    rows = w.shape[0] if w.dim() >= 2 else 1
    with torch.no_grad():
        w2 = w.detach().reshape(rows, -1)
        wt = None if weights is None else weights.detach().reshape(rows, -1)
        w_q = fit(w2, bits, wt, **kw).dequantized.reshape(w.shape).to(w.dtype)
    return ste(w, w_q)
