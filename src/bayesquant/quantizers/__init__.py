"""Quantizers: pure tensor functions over typed parameters (uniform, quantile, Lloyd–Max, log) and the STE.

Every quantizer fits parameters per row of a (rows, cols) weight (per group with the *_groups helpers, per
tensor on w.reshape(1, -1)), returns uint8 codes in [0, 2ᵇ − 1] and dequantizes them back. `QUANTIZERS`
names the codebook kinds ("uniform", "quantile", "lloyd_max", "log") for callers that pick one by name.
"""

from bayesquant.quantizers.groups import expand_groups, fit_groups, resolve_group_size
from bayesquant.quantizers.kinds import QUANTIZERS, QuantizerFit, QuantizerFn
from bayesquant.quantizers.lloyd_max import assign_nearest, dequantize_codebook, lloyd_max
from bayesquant.quantizers.log import LogParams, dequantize_log, fit_log, fit_log_groups, quantize_log
from bayesquant.quantizers.quantile import (
    assign_by_edges,
    fit_gaussian,
    fit_quantile,
    gaussian_quantile_edges,
    gaussian_quantile_levels,
)
from bayesquant.quantizers.ste import fake_quant_ste, ste
from bayesquant.quantizers.uniform import (
    UniformParams,
    dequantize_groups,
    dequantize_uniform,
    fake_quantize_uniform,
    fit_uniform,
    fit_uniform_groups,
    quantize_groups,
    quantize_uniform,
)

__all__ = [
    "QUANTIZERS",
    "LogParams",
    "QuantizerFit",
    "QuantizerFn",
    "UniformParams",
    "assign_by_edges",
    "assign_nearest",
    "dequantize_codebook",
    "dequantize_groups",
    "dequantize_log",
    "dequantize_uniform",
    "expand_groups",
    "fake_quant_ste",
    "fake_quantize_uniform",
    "fit_gaussian",
    "fit_groups",
    "fit_log",
    "fit_log_groups",
    "fit_quantile",
    "fit_uniform",
    "fit_uniform_groups",
    "gaussian_quantile_edges",
    "gaussian_quantile_levels",
    "lloyd_max",
    "quantize_groups",
    "quantize_log",
    "quantize_uniform",
    "resolve_group_size",
    "ste",
]
