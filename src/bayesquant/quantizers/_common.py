"""Argument checks and small helpers shared by the quantizers (internal)."""

from __future__ import annotations

import torch
from torch import Tensor

CODE_DTYPE = torch.uint8  # every quantizer returns codes as uint8: 2**bits ≤ 256 levels for bits ≤ 8


def check_bits(bits: object, name: str = "bits") -> int:
    """`bits` as an int in 1..8, or a ValueError naming the argument, the value and the valid range."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"{name}={bits!r}: must be an integer in 1..8")
    return bits


def check_choice(value: object, name: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"{name}={value!r}: unknown; valid: {', '.join(valid)}")
    return value  # type: ignore[return-value]


def check_matrix(w: object, name: str = "w", *, finite: bool = True) -> Tensor:
    """`w` as a non-empty 2-D floating tensor (rows, cols)."""
    if not isinstance(w, Tensor) or not w.dtype.is_floating_point:
        what = f"{w.dtype} tensor" if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(f"{name}: expected a floating-point torch.Tensor, got {what}")
    if w.dim() != 2 or w.numel() == 0:
        raise ValueError(
            f"{name}: expected a non-empty 2-D tensor (rows, cols), got shape {tuple(w.shape)}; "
            "use w.reshape(1, -1) for one grid per tensor"
        )
    if finite and not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return w


def check_weights(weights: object, like: Tensor, name: str = "weights") -> Tensor:
    """Non-negative finite importance weights broadcastable to `like`, returned expanded to its shape."""
    if not isinstance(weights, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape {tuple(like.shape)}, got {type(weights).__name__}")
    try:
        weights = torch.broadcast_to(weights, like.shape)
    except RuntimeError:
        raise ValueError(
            f"{name}: shape {tuple(weights.shape)} does not broadcast to the data's shape {tuple(like.shape)}"
        ) from None
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"{name}: must be finite and non-negative")
    return weights


def work_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (never in half precision)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def row_quantile(x: Tensor, q: float) -> Tensor:
    """Per-row q-quantile (q in [0, 1]) of x (rows, n) with linear interpolation, as numpy's default: (rows, 1).

    Sorting avoids torch.quantile's limit on the input size (a per-tensor fit of a large layer).
    """
    xs = torch.sort(x, dim=1).values
    pos = q * (x.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, x.shape[1] - 1)
    frac = pos - lo
    return xs[:, lo : lo + 1] + frac * (xs[:, hi : hi + 1] - xs[:, lo : lo + 1])
