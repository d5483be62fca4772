"""Likelihoods and the batch convention shared by the posterior estimators.

A batch is
- `classification` / `regression`: a tuple `(*inputs, target)`: every element but the last is a positional
  input of the model (images; or input_ids, attention_mask), the last is the target (class indices (B,), or
  regression targets (B,) / (B, D));
- `causal_lm`: a LongTensor of token ids (B, T) (or a one-element tuple holding it): the model predicts
  tokens 2..T of each row from the tokens before them.

`nll(model, batch, likelihood)` returns the per-example negative log-likelihood (B,) — per sequence, summed
over its tokens, for language models — so `nll.sum()` is the batch's share of −log p(D | w).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bayesquant.errors import UserError


class Likelihood(str, Enum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    CAUSAL_LM = "causal_lm"

    @classmethod
    def parse(cls, value: str | Likelihood) -> Likelihood:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(v.value for v in cls)
            raise UserError(f"likelihood={value!r}: unknown; valid: {valid}") from None


def split_batch(batch: Any, likelihood: Likelihood) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """(model inputs, targets) of one batch (see the module docstring)."""
    if likelihood == Likelihood.CAUSAL_LM:
        ids = batch[0] if isinstance(batch, tuple | list) else batch
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() != 2 or ids.shape[1] < 2:
            raise UserError("a causal_lm batch must be a LongTensor of token ids (B, T) with T ≥ 2")
        return (ids,), ids[:, 1:]
    if not isinstance(batch, tuple | list) or len(batch) < 2:
        raise UserError(f"a {likelihood.value} batch must be a tuple (*inputs, target), got {type(batch).__name__}")
    return tuple(batch[:-1]), batch[-1]


def forward(model: nn.Module, inputs: tuple[torch.Tensor, ...], likelihood: Likelihood) -> torch.Tensor:
    """The model's output tensor: logits (B, C) or (B, T, V), or regression predictions."""
    lm = likelihood == Likelihood.CAUSAL_LM
    out = model(input_ids=inputs[0], use_cache=False) if lm else model(*inputs)
    return out.logits if hasattr(out, "logits") else out


def _at_least_f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def nll_from_output(
    output: torch.Tensor, targets: torch.Tensor, likelihood: Likelihood, sigma_noise: float = 1.0
) -> torch.Tensor:
    """Per-example negative log-likelihood (B,) from the model's output."""
    if likelihood == Likelihood.CLASSIFICATION:
        return F.cross_entropy(_at_least_f32(output), targets, reduction="none")
    if likelihood == Likelihood.CAUSAL_LM:
        logits = _at_least_f32(output[:, :-1])  # (B, T-1, V) predicts tokens 2..T
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        return per_token.view(targets.shape).sum(1)
    pred = output.reshape(targets.shape[0], -1)
    target = targets.reshape(targets.shape[0], -1).to(pred.dtype)
    sq = ((pred - target) ** 2).sum(1)
    return 0.5 * sq / sigma_noise**2 + pred.shape[1] * (math.log(sigma_noise) + 0.5 * math.log(2 * math.pi))


def nll(model: nn.Module, batch: Any, likelihood: Likelihood, sigma_noise: float = 1.0) -> torch.Tensor:
    inputs, targets = split_batch(batch, likelihood)
    return nll_from_output(forward(model, inputs, likelihood), targets, likelihood, sigma_noise)


def batch_size(batch: Any, likelihood: Likelihood) -> int:
    return split_batch(batch, likelihood)[1].shape[0]
