"""Metrics on predicted class probabilities and token log-likelihoods.

Probabilities are (N, C) tensors (or (T, N, C) for T Monte-Carlo samples where stated); labels (N,) int.
Everything is computed in float64.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

_EPS = 1e-12


def _f64(p: torch.Tensor) -> torch.Tensor:
    return p.detach().to(torch.float64)


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(-1) == labels).double().mean())


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    p = _f64(probs).gather(-1, labels.view(-1, 1)).squeeze(-1)
    return float(-(p.clamp_min(_EPS)).log().mean())


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: equal-width confidence bins (lower edge open, upper closed),
    Σ_b (n_b / N) · |accuracy_b − mean confidence_b|."""
    p = _f64(probs)
    conf, pred = p.max(-1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += float(in_bin.double().mean() * (correct[in_bin].mean() - conf[in_bin].mean()).abs())
    return total


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score: mean over examples of Σ_c (p_c − 1[y = c])²."""
    p = _f64(probs)
    onehot = torch.nn.functional.one_hot(labels, p.shape[-1]).double()
    return float((p - onehot).pow(2).sum(-1).mean())


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-example entropy −Σ p log p (nats) of (…, C) probabilities."""
    p = _f64(probs)
    return -(p * p.clamp_min(_EPS).log()).sum(-1)


def predictive_entropy(sample_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean prediction over T samples: (T, N, C) → (N,). Total (aleatoric + epistemic)."""
    return entropy(_f64(sample_probs).mean(0))


def mutual_information(sample_probs: torch.Tensor) -> torch.Tensor:
    """Epistemic uncertainty H[E_θ p] − E_θ H[p] over T samples: (T, N, C) → (N,), ≥ 0."""
    sp = _f64(sample_probs)
    return (entropy(sp.mean(0)) - entropy(sp).mean(0)).clamp_min(0.0)


def auroc(scores: torch.Tensor | np.ndarray, positive: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve for telling `positive` examples apart by higher `scores` (scikit-learn)."""
    y = np.asarray(positive, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("auroc needs both positive and negative examples")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def agreement(probs: torch.Tensor, ref_probs: torch.Tensor) -> float:
    """Fraction of examples whose top-1 class equals the reference model's."""
    return float((probs.argmax(-1) == ref_probs.argmax(-1)).double().mean())


def kl_divergence(ref_probs: torch.Tensor, probs: torch.Tensor) -> float:
    """Mean KL(reference ‖ model) in nats."""
    r, p = _f64(ref_probs), _f64(probs)
    return float((r * (r.clamp_min(_EPS).log() - p.clamp_min(_EPS).log())).sum(-1).mean())


def _check_paired(name: str, probs_a: torch.Tensor, probs_b: torch.Tensor, labels: torch.Tensor) -> None:
    if probs_a.shape != probs_b.shape or probs_a.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: shapes {tuple(probs_a.shape)}, {tuple(probs_b.shape)} and "
                         f"labels {tuple(labels.shape)} must describe the same examples")  # fmt: skip


def paired_bootstrap(
    metric: Callable[[torch.Tensor, torch.Tensor], float],
    probs_a: torch.Tensor,
    probs_b: torch.Tensor,
    labels: torch.Tensor,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """metric(a) − metric(b) on the same examples, with a percentile confidence interval from `resamples`
    bootstrap draws of the examples (the same draw for both models, so their shared noise cancels).
    Returns {"difference", "low", "high", "fraction_below_zero"}."""
    _check_paired("paired_bootstrap", probs_a, probs_b, labels)
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"paired_bootstrap: resamples={resamples} must be ≥ 1 and level={level} in (0, 1)")
    gen = torch.Generator().manual_seed(seed)
    n = labels.shape[0]
    diffs = torch.empty(resamples, dtype=torch.float64)
    for i in range(resamples):
        idx = torch.randint(n, (n,), generator=gen)
        diffs[i] = metric(probs_a[idx], labels[idx]) - metric(probs_b[idx], labels[idx])
    tail = (1 - level) / 2
    low, high = torch.quantile(diffs, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"difference": metric(probs_a, labels) - metric(probs_b, labels), "low": low, "high": high,
            "fraction_below_zero": float((diffs < 0).double().mean())}  # fmt: skip


def mcnemar_exact(probs_a: torch.Tensor, probs_b: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Exact McNemar test of equal accuracy on the same examples: of the examples exactly one model gets right,
    how many each gets, and the two-sided binomial p-value of that split under p = 1/2 (1.0 with none).
    Returns {"a_only", "b_only", "p_value"}."""
    _check_paired("mcnemar_exact", probs_a, probs_b, labels)
    right_a, right_b = probs_a.argmax(-1) == labels, probs_b.argmax(-1) == labels
    a_only, b_only = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": float(p)}


def perplexity(mean_nll: float) -> float:
    """exp of the mean token negative log-likelihood."""
    return math.exp(mean_nll)
