"""Codebook kinds by name: every entry fits, quantizes and dequantizes a (rows, cols) weight in one call.

    fit = QUANTIZERS.get("lloyd_max")
    codes, dequantized, codebook = fit(w, 3, weights=precision)

Entries share the signature `fit(w (rows, cols), bits, weights=None, **kw) -> QuantizerFit` where codes is
uint8 (rows, cols), dequantized is float (rows, cols) and params is a `UniformParams`/`LogParams` with
(rows, n_groups) tensors or a codebook tensor (rows, 2ᵇ). `weights` (rows, cols) are per-weight importances
(e.g. the posterior precision): "uniform" then searches its range by weighted MSE, "quantile" fits a weighted
Gaussian, "lloyd_max" computes weighted centroids; "log" has no use for them and refuses them.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from torch import Tensor

from bayesquant.quantizers._common import check_choice
from bayesquant.quantizers.groups import expand_groups
from bayesquant.quantizers.lloyd_max import assign_nearest, dequantize_codebook, lloyd_max
from bayesquant.quantizers.log import LogParams, dequantize_log, fit_log_groups, quantize_log
from bayesquant.quantizers.quantile import assign_by_edges, fit_gaussian, fit_quantile, gaussian_quantile_edges
from bayesquant.quantizers.uniform import UniformParams, dequantize_groups, fit_uniform_groups, quantize_groups
from bayesquant.registry import Registry

__all__ = ["QUANTIZERS", "QuantizerFit", "QuantizerFn"]


class QuantizerFit(NamedTuple):
    codes: Tensor  # (rows, cols) uint8
    dequantized: Tensor  # (rows, cols)
    params: UniformParams | LogParams | Tensor  # grid parameters, or a codebook (rows, 2**bits)


class QuantizerFn(Protocol):
    def __call__(self, w: Tensor, bits: int, weights: Tensor | None = None, **kw: Any) -> QuantizerFit: ...


QUANTIZERS: Registry[QuantizerFn] = Registry("quantizer", "--quantizer")


@QUANTIZERS.decorator("uniform")
def _uniform(
    w: Tensor,
    bits: int,
    weights: Tensor | None = None,
    *,
    group_size: int | None = None,
    method: str | None = None,
    **kw,
) -> QuantizerFit:
    """Affine grid per row or group; method defaults to "mse" (weighted) when weights are given, else "minmax"."""
    method = method or ("minmax" if weights is None else "mse")
    if weights is not None:
        kw["weights"] = weights
    params = fit_uniform_groups(w, bits, group_size, method=method, **kw)
    codes = quantize_groups(w, params, group_size)
    return QuantizerFit(codes, dequantize_groups(codes, params, group_size), params)


@QUANTIZERS.decorator("quantile")
def _quantile(
    w: Tensor, bits: int, weights: Tensor | None = None, *, midpoint: str = "value", assign: str = "nearest"
) -> QuantizerFit:
    """Paper (c) §3.3 codebook; assign="nearest" (default) or "edges" (the paper's cells a_k = F⁻¹(k/2ᵇ))."""
    codebook = fit_quantile(w, bits, weights=weights, midpoint=midpoint)
    if check_choice(assign, "assign", ("nearest", "edges")) == "nearest":
        codes = assign_nearest(w, codebook)
    else:
        codes = assign_by_edges(w, gaussian_quantile_edges(*fit_gaussian(w, weights), bits))
    return QuantizerFit(codes, dequantize_codebook(codes, codebook), codebook)


@QUANTIZERS.decorator("lloyd_max")
def _lloyd_max(
    w: Tensor, bits: int, weights: Tensor | None = None, *, iters: int = 100, tol: float = 1e-8
) -> QuantizerFit:
    """Per-row (weighted) Lloyd–Max codebook, nearest-level codes."""
    if w.dim() != 2:
        raise ValueError(f"w: expected a 2-D tensor (rows, cols), got shape {tuple(w.shape)}")
    codebook = lloyd_max(w, bits, weights, iters=iters, tol=tol)
    codes = assign_nearest(w, codebook)
    return QuantizerFit(codes, dequantize_codebook(codes, codebook), codebook)


@QUANTIZERS.decorator("log")
def _log(w: Tensor, bits: int, weights: Tensor | None = None, *, group_size: int | None = None) -> QuantizerFit:
    """Log grid per row or group, for positive tensors (σ)."""
    if weights is not None:
        raise ValueError("weights: the log quantizer's grid spans each row's min..max and takes no weights; pass None")
    params = fit_log_groups(w, bits, group_size)
    full = expand_groups(params, group_size, w.shape[1])
    codes = quantize_log(w, full)
    return QuantizerFit(codes, dequantize_log(codes, full), params)
