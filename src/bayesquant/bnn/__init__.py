"""Bayesian neural networks: mean-field Gaussian layers (Bayes-by-backprop with local reparameterization)."""

from bayesquant.bnn.layers import (
    BayesConv2d,
    BayesLayer,
    BayesLinear,
    bayesian_layers,
    deterministic,
    kl_divergence,
    to_bayesian,
)

__all__ = [
    "BayesConv2d",
    "BayesLayer",
    "BayesLinear",
    "bayesian_layers",
    "deterministic",
    "kl_divergence",
    "to_bayesian",
]
