"""Group-wise grids: one parameter set per block of `group_size` consecutive columns of each row.

A weight (rows, cols) is split along its columns into ⌈cols / g⌉ groups, the last one possibly partial. A
parameters dataclass fitted per row has tensor fields of shape (rows, 1); fitted per group they have shape
(rows, n_groups), and `expand_groups` repeats them to (rows, cols) so that the per-row quantize/dequantize
functions apply unchanged. group_size=None (or ≥ cols) means one group per row (per channel); a per-tensor
grid is a per-row fit of w.reshape(1, -1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

from bayesquant.quantizers._common import check_matrix

P = TypeVar("P")

__all__ = ["expand_groups", "fit_groups", "resolve_group_size"]


def resolve_group_size(group_size: int | None, cols: int) -> int:
    """The effective group size: `cols` for None or anything ≥ cols, else `group_size` (a positive int)."""
    if group_size is None:
        return cols
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r}: must be a positive integer or None (one group per row)")
    return min(group_size, cols)


def _tensor_fields(params: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(params) if isinstance(getattr(params, f.name), Tensor)]


def fit_groups(
    fit: Callable[..., P], w: Tensor, bits: int, group_size: int | None, weights: Tensor | None = None, **kw: Any
) -> P:
    """`fit(w_group, bits, **kw)` on every column group; tensor fields come back as (rows, n_groups).

    Equivalent to concatenating the per-row fits of each slice w[:, i·g:(i+1)·g]; full groups are fitted in
    one call on w reshaped to (rows·n_full, g), the partial last group (if any) in a second call.
    weights (rows, cols), if given, is sliced like w and passed on as `weights=`.
    """
    w = check_matrix(w, finite=False)
    rows, cols = w.shape
    g = resolve_group_size(group_size, cols)
    n_full, rest = divmod(cols, g)
    if weights is not None:
        weights = torch.broadcast_to(weights, w.shape)

    def call(x: Tensor, wt: Tensor | None) -> P:
        return fit(x, bits, **kw) if wt is None else fit(x, bits, weights=wt, **kw)

    parts: list[P] = []
    if n_full:
        full = w[:, : n_full * g].reshape(rows * n_full, g)  # (rows·n_full, g), row-major: row r, group j
        wt = None if weights is None else weights[:, : n_full * g].reshape(rows * n_full, g)
        p = call(full, wt)
        parts.append(dataclasses.replace(p, **{k: getattr(p, k).reshape(rows, n_full) for k in _tensor_fields(p)}))
    if rest:
        parts.append(call(w[:, n_full * g :], None if weights is None else weights[:, n_full * g :]))
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return dataclasses.replace(
        first, **{k: torch.cat([getattr(p, k) for p in parts], 1) for k in _tensor_fields(first)}
    )


def expand_groups(params: P, group_size: int | None, cols: int) -> P:
    """Per-group parameters (rows, n_groups) repeated along the columns to (rows, cols)."""
    g = resolve_group_size(group_size, cols)
    n_groups = -(-cols // g)
    out = {}
    for k in _tensor_fields(params):
        t = getattr(params, k)
        if t.dim() != 2 or t.shape[1] != n_groups:
            raise ValueError(
                f"{k}: shape {tuple(t.shape)} does not have n_groups = ⌈{cols}/{g}⌉ = {n_groups} columns; "
                "pass the group_size the parameters were fitted with"
            )
        out[k] = t.repeat_interleave(g, dim=1)[:, :cols]  # (rows, cols)
    return dataclasses.replace(params, **out)
