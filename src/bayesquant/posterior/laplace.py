"""Diagonal Laplace approximation around the trained weights (MacKay 1992; Ritter et al. 2018; BayesQ §3).

    σ² = 1 / (s·C + λ),   C = Σ_n c_n over the examples seen in `fit`,   s = n_data / n_seen

with c_n the curvature contributed by example n:
- `fisher`: the empirical Fisher, c_n = (∂ℓ_n/∂w)², ℓ_n the example's negative log-likelihood (for language
  models one sequence, summed over its tokens);
- `ggn`: the diagonal of the generalised Gauss–Newton JᵀΛJ — classification: Σ_k p_k (∂ℓ(y=k)/∂w)²
  (= the expected Fisher under the model's own predictive), exact with C backward passes up to
  `EXACT_GGN_CLASSES` classes, beyond that (ImageNet's 1,000) its unbiased Monte-Carlo estimate
  (1/S) Σ_s (∂ℓ(y_s)/∂w)² with S = `MC_GGN_SAMPLES` labels y_s drawn from the model's predictive per example;
  regression: (∂f/∂w)²/σ_noise²;
- `layerwise`: the diagonal of each layer's reconstruction Hessian 2·Σ_rows a_i² (the GPTQ Hessian before
  averaging), output-agnostic and forward-only.

λ is the prior precision of N(0, λ⁻¹ I): a number, or "marglik" for the λ maximising the Laplace evidence
(`marglik_prior_precision`).

>>> lap = DiagLaplace(model, likelihood="classification", prior_precision="marglik").fit(batches)  # doctest: +SKIP
>>> lap.posterior.save("net.posterior.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bayesquant.errors import UserError
from bayesquant.models.family import FAMILIES, Family
from bayesquant.posterior.base import NotFittedError, Posterior, check_finite_weights
from bayesquant.posterior.curvature import InputRecorder, expand_layerwise, layerwise_buffer
from bayesquant.posterior.likelihood import Likelihood, forward, nll_from_output, split_batch

log = logging.getLogger(__name__)


class Curvature(str, Enum):
    FISHER = "fisher"
    GGN = "ggn"
    LAYERWISE = "layerwise"


def _parse(enum: type[Enum], value: Any, argument: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        valid = ", ".join(v.value for v in enum)
        raise UserError(f"{argument}={value!r}: unknown; valid: {valid}") from None


def marglik_prior_precision(curv: dict[str, torch.Tensor], mean: dict[str, torch.Tensor]) -> float:
    """The λ of N(0, λ⁻¹I) that maximises the Laplace log evidence at fixed weights w and curvature h:

        log p(D) ≈ log p(D|w) + (P/2)·log λ − (λ/2)·‖w‖² − ½ Σ_i log(h_i + λ) + const,

    whose derivative vanishes where  Σ_i h_i / (λ (h_i + λ)) = ‖w‖²  (MacKay's γ/λ = ‖w‖², γ the effective
    number of parameters). The left side falls monotonically from +∞ to 0, so the root is unique; it is
    found by bisection on log λ.
    """
    sq = sum(float(m.double().pow(2).sum()) for m in mean.values())
    if sq == 0 or all(float(h.max()) <= 0 for h in curv.values()):
        raise UserError("prior_precision='marglik': the curvature or the weights are all zero; give a number instead")

    def excess(log_lam: float) -> float:  # Σ h/(λ(h+λ)) − ‖w‖², decreasing in λ
        lam = math.exp(log_lam)
        gamma = sum(float((h.double() / (h.double() + lam)).sum()) for h in curv.values())
        return gamma / lam - sq

    lo, hi = math.log(1e-12), math.log(1e12)
    if excess(hi) > 0:
        return math.exp(hi)
    for _ in range(80):  # bisection to ~1e-7 relative in λ
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return math.exp(0.5 * (lo + hi))


EXACT_GGN_CLASSES = 64  # up to this many classes the GGN sums over all of them (one backward pass each)
MC_GGN_SAMPLES = 1  # beyond it: labels drawn from the model's predictive, this many per example (docs/methods.md)


class DiagLaplace:
    """Diagonal Laplace posterior over every quantizable weight of a model.

    model: an nn.Module or a `LoadedModel` (its family names the quantizable modules).
    likelihood: "classification" | "causal_lm" | "regression".
    curvature: "fisher" | "ggn" | "layerwise" (see the module docstring).
    prior_precision: λ > 0, or "marglik".
    n_data: the data-set size N the posterior stands for (default: the examples seen in `fit`); the summed
        curvature is scaled by N / n_seen, e.g. n_data=60000 when fitting on 1024 MNIST images.
    sigma_noise: the observation noise of the regression likelihood.
    mc_samples: labels drawn per example for the Monte-Carlo GGN (more than `EXACT_GGN_CLASSES` classes).
    seed: seeds those draws; the same seed draws the same labels at every fit.
    """

    def __init__(
        self,
        model: nn.Module | Any,
        likelihood: str | Likelihood = "classification",
        *,
        curvature: str | Curvature = "fisher",
        prior_precision: float | str = 1.0,
        n_data: int | None = None,
        sigma_noise: float = 1.0,
        mc_samples: int = MC_GGN_SAMPLES,
        seed: int = 0,
        family: Family | None = None,
        progress: bool = True,
    ) -> None:
        self.key = getattr(model, "key", None)
        self.model: nn.Module = getattr(model, "module", model)
        self.family = family or getattr(model, "family", None) or FAMILIES["small-net"]
        self.likelihood = Likelihood.parse(likelihood)
        self.curvature = _parse(Curvature, curvature, "curvature")
        if self.curvature == Curvature.GGN and self.likelihood == Likelihood.CAUSAL_LM:
            raise UserError(
                "curvature='ggn' with likelihood='causal_lm': the exact GGN needs one backward pass per vocabulary "
                "entry; use curvature='fisher' (per-sequence squared gradients) or 'layerwise'"
            )
        if isinstance(prior_precision, str):
            if prior_precision != "marglik":
                raise UserError(f"prior_precision={prior_precision!r}: give a positive number or 'marglik'")
        elif not (prior_precision > 0 and math.isfinite(prior_precision)):
            raise UserError(f"prior_precision={prior_precision}: must be a positive number (or 'marglik')")
        if n_data is not None and n_data < 1:
            raise UserError(f"n_data={n_data}: must be a positive number of examples (or None)")
        if not sigma_noise > 0:
            raise UserError(f"sigma_noise={sigma_noise}: must be positive")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise UserError(f"mc_samples={mc_samples!r}: must be a positive whole number of labels per example")
        self.mc_samples = mc_samples
        self.seed = int(seed)
        self.prior_precision = prior_precision
        self.n_data = n_data
        self.sigma_noise = float(sigma_noise)
        self.progress = progress
        self.modules = self.family.quantizable_modules(self.model)
        check_finite_weights(self.modules)
        self._posterior: Posterior | None = None

    # ---------------------------------------------------------------- fitting
    def fit(self, loader: Iterable[Any]) -> DiagLaplace:
        """Accumulate the curvature over `loader` (batches as in `posterior.likelihood`), then form σ²."""
        start = time.perf_counter()
        dtype = torch.float64 if next(iter(self.modules.values())).weight.dtype == torch.float64 else torch.float32
        if self.curvature == Curvature.LAYERWISE:
            curv = {n: layerwise_buffer(m, dtype) for n, m in self.modules.items()}
        else:
            curv = {n: torch.zeros_like(m.weight, dtype=dtype) for n, m in self.modules.items()}
        was_training = self.model.training
        flags = {n: m.weight.requires_grad for n, m in self.modules.items()}
        self.model.eval()  # no dropout: the curvature at the trained weights
        recorder = InputRecorder(self.modules)
        self._gen = torch.Generator().manual_seed(self.seed)  # the Monte-Carlo GGN's labels, the same at every fit
        n_seen = 0
        self._drawn_labels = False  # set when the GGN is a Monte-Carlo estimate (more than EXACT_GGN_CLASSES)
        try:
            for m in self.modules.values():  # so that every module's output is part of the graph
                m.weight.requires_grad_(self.curvature != Curvature.LAYERWISE)
            total = len(loader) if hasattr(loader, "__len__") else None
            bar = tqdm(loader, total=total, desc=f"laplace ({self.curvature.value})", unit="batch",
                       mininterval=1.0, disable=not self.progress)  # fmt: skip
            for batch in bar:
                recorder.clear()
                n_seen += self._accumulate(batch, recorder, curv)
        finally:
            recorder.remove()
            for n, m in self.modules.items():
                m.weight.requires_grad_(flags[n])
            self.model.train(was_training)
        if n_seen == 0:
            raise UserError("the loader yielded no batches; give at least one batch of calibration data")
        if self.curvature == Curvature.LAYERWISE:
            curv = {n: expand_layerwise(self.modules[n], c) for n, c in curv.items()}
        scale = (self.n_data or n_seen) / n_seen
        curv = {n: scale * c for n, c in curv.items()}
        mean = {n: m.weight.detach().to(dtype).clone() for n, m in self.modules.items()}
        lam = marglik_prior_precision(curv, mean) if self.prior_precision == "marglik" else float(self.prior_precision)
        var = {n: (c + lam).reciprocal() for n, c in curv.items()}
        meta = {
            "method": "laplace-" + ("layerwise" if self.curvature == Curvature.LAYERWISE else "diag"),
            "curvature": self.curvature.value,
            "likelihood": self.likelihood.value,
            "prior_precision": lam,
            "prior_precision_mode": "marglik" if self.prior_precision == "marglik" else "given",
            "n_seen": n_seen,
            "n_data": self.n_data or n_seen,
            "sigma_noise": self.sigma_noise,
            "model": self.key or type(self.model).__name__,
            "ggn_mc_samples": self.mc_samples if self._drawn_labels else 0,  # 0: exact (or not the GGN)
            "seconds": time.perf_counter() - start,
        }
        self.curvature_ = curv
        self.prior_precision_ = lam
        self._posterior = Posterior(mean, var, meta)
        log.info("laplace: %d examples, λ = %.4g, %.1f s", n_seen, lam, meta["seconds"])
        return self

    def _accumulate(self, batch: Any, recorder: InputRecorder, curv: dict[str, torch.Tensor]) -> int:
        inputs, targets = split_batch(batch, self.likelihood)
        if self.curvature == Curvature.LAYERWISE:
            with torch.no_grad():
                forward(self.model, inputs, self.likelihood)
            recorder.add_input_squares(curv)
            return targets.shape[0]
        with torch.enable_grad():
            out = forward(self.model, inputs, self.likelihood)
            if self.curvature == Curvature.FISHER:
                loss = nll_from_output(out, targets, self.likelihood, self.sigma_noise).sum()
                recorder.add_squared_grads(loss, curv, retain_graph=False)
            elif self.likelihood == Likelihood.CLASSIFICATION:
                logits = out if out.dtype == torch.float64 else out.float()
                probs = logits.softmax(-1).detach()  # (B, C)
                n_classes = logits.shape[-1]
                if n_classes <= EXACT_GGN_CLASSES:
                    for k in range(n_classes):  # Σ_k p_k g_k²: scale example n's loss by √p_nk
                        target = torch.full_like(targets, k)
                        loss = (probs[:, k].sqrt() * F.cross_entropy(logits, target, reduction="none")).sum()
                        recorder.add_squared_grads(loss, curv, retain_graph=k + 1 < n_classes)
                else:  # (1/S) Σ_s g(y_s)², y_s ~ p: scale each sample's loss by 1/√S
                    draws, self._drawn_labels = self.mc_samples, True
                    drawn = torch.multinomial(probs.float(), draws, replacement=True, generator=self._gen)
                    for s in range(draws):
                        loss = F.cross_entropy(logits, drawn[:, s], reduction="sum") / math.sqrt(draws)
                        recorder.add_squared_grads(loss, curv, retain_graph=s + 1 < draws)
            else:  # regression: JᵀJ/σ², one backward pass per output dimension
                pred = out.reshape(out.shape[0], -1)
                for d in range(pred.shape[1]):
                    recorder.add_squared_grads(pred[:, d].sum() / self.sigma_noise, curv, d + 1 < pred.shape[1])
        return targets.shape[0]

    @property
    def posterior(self) -> Posterior:
        if self._posterior is None:
            raise NotFittedError("DiagLaplace: call fit(loader) before reading the posterior")
        return self._posterior
