"""Rounding solvers (RTN, GPTQ) and the layer-by-layer driver."""

from bayesquant.solvers.gptq import gptq_quantize
from bayesquant.solvers.rtn import rtn_quantize
from bayesquant.solvers.sequential import quantize_sequential

__all__ = ["gptq_quantize", "quantize_sequential", "rtn_quantize"]
