"""Weight posteriors N(μ, σ²) for any zoo model: diagonal Laplace and mean-field variational inference."""

from bayesquant.posterior.base import NotFittedError, Posterior, informativeness_table
from bayesquant.posterior.laplace import DiagLaplace
from bayesquant.posterior.likelihood import Likelihood
from bayesquant.posterior.vi import MeanFieldVI, bayesian_from_posterior

__all__ = [
    "DiagLaplace",
    "Likelihood",
    "MeanFieldVI",
    "NotFittedError",
    "Posterior",
    "bayesian_from_posterior",
    "informativeness_table",
]
