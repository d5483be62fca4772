"""Mean-field variational inference (Bayes-by-backprop) over the quantizable weights of any model.

q(w) = Π N(μ_i, σ_i²), σ = softplus(ρ), prior p(w) = N(0, prior_std² I) (Blundell et al. 2015, "Weight
Uncertainty in Neural Networks"). The quantizable Linear/Conv2d layers (from the model's `Family`) are
replaced in place by `BayesLinear` / `BayesConv2d`, which sample their pre-activations with the local
reparameterization trick (Kingma, Salimans & Welling 2015). μ starts at the pretrained weights (paper (c),
appendix G), σ at `init_std`. Training minimises the negative ELBO divided by the number of data points N:

    L(μ, ρ) = (1/B) Σ_{i∈batch} E_q[−log p(y_i | x_i, w)] + β_t · KL(q ‖ p) / N

with one local-reparameterization draw per example, the KL in closed form, and β_t rising linearly from 0 to 1
over the first `kl_anneal` fraction of the steps (KL annealing: the data term first moves μ and σ away from
their initial values before the prior pulls σ up). Adam on μ, ρ and the biases of the converted layers; every
other parameter (norms, embeddings, unconverted layers) stays frozen, and the model runs in eval mode (BatchNorm
statistics and dropout stay as pretrained; the Bayesian layers sample in either mode). The learning rate
decays to 0 on a cosine schedule (`cosine=True`), which averages out the Monte-Carlo gradient noise at the end.

>>> vi = MeanFieldVI(model, "classification", prior_std=0.1, lr=1e-3).fit(loader, epochs=2)  # doctest: +SKIP
>>> probs = vi.predict(images, samples=16)  # (B, C) mean softmax over 16 weight draws  # doctest: +SKIP
>>> vi.posterior.save("lenet.vi.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sized
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from bayesquant.bnn.layers import BayesLayer, kl_divergence, to_bayesian
from bayesquant.errors import UserError
from bayesquant.models.family import FAMILIES, Family
from bayesquant.nn.placement import placement, to_model
from bayesquant.posterior.base import NotFittedError, Posterior, check_finite_weights
from bayesquant.posterior.likelihood import Likelihood, batch_size, forward, nll_from_output, split_batch

log = logging.getLogger(__name__)

__all__ = ["MeanFieldVI", "bayesian_from_posterior"]


def _resolve(model: Any, family: Family | str | None) -> tuple[nn.Module, Family, str]:
    """(module, family, model key): a LoadedModel brings its own module, family and key."""
    key = None
    if hasattr(model, "module") and hasattr(model, "family") and not isinstance(model, nn.Module):
        key = getattr(model, "key", None)
        family = model.family if family is None else family
        model = model.module
    if not isinstance(model, nn.Module):
        raise UserError(f"model: expected an nn.Module or a LoadedModel, got {type(model).__name__}")
    if family is None:
        family = FAMILIES["small-net"]
    elif isinstance(family, str):
        if family not in FAMILIES:
            raise UserError(f"family={family!r}: unknown; valid: {', '.join(FAMILIES)}")
        family = FAMILIES[family]
    return model, family, key or type(model).__name__


def _positive(name: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if not (math.isfinite(x) and x > 0):
        raise UserError(f"{name}={value!r}: must be a positive finite number")
    return x


def _count(loader: Iterable, likelihood: Likelihood, need_examples: bool) -> tuple[int, int]:
    """(batches per pass, examples per pass); the examples are 0 when not needed. A pass only where `len`
    cannot tell (a DataLoader knows both without loading anything)."""
    if iter(loader) is loader:
        raise UserError(
            "loader: a one-shot iterator cannot be passed over several times; pass a list of batches or a DataLoader"
        )
    n_batches = len(loader) if isinstance(loader, Sized) else None
    n_examples = 0
    if need_examples:
        sampler = getattr(loader, "sampler", None)
        bs = getattr(loader, "batch_size", None)
        if isinstance(loader, torch.utils.data.DataLoader) and bs is not None and isinstance(sampler, Sized):
            try:
                n_examples = len(sampler)
                if loader.drop_last:
                    n_examples = n_examples // bs * bs
            except TypeError:  # a sampler whose __len__ raises (e.g. over an IterableDataset)
                n_examples = 0
    if n_batches is None or (need_examples and n_examples == 0):
        n_batches = n_examples = 0
        for batch in loader:
            n_batches += 1
            n_examples += batch_size(batch, likelihood)
    return n_batches, n_examples


class MeanFieldVI:
    """Bayes-by-backprop over the quantizable Linear/Conv2d weights of `model` (converted in place).

    model: an nn.Module or a `LoadedModel` (its `.module` is converted, its `.family` and `.key` are used).
    likelihood: "classification" | "regression" | "causal_lm" (the batch convention of `likelihood.py`).
    family: which modules become Bayesian; default the LoadedModel's, else FAMILIES["small-net"] (every
        Linear/Conv2d).
    prior_std: standard deviation of the N(0, prior_std²) prior on every weight.
    init_std: the initial σ of every weight (absolute, not relative to |μ|): small, so that training starts at
        the pretrained network and the data term, not the noise, decides each σ.
    lr: Adam learning rate (peak of the cosine schedule when `cosine`).
    kl_anneal: fraction of all steps over which β rises linearly from 0 to 1 (0: β = 1 from the start).
    n_data: N in KL/N (the data set size the posterior is conditioned on); default the number of examples in
        one pass of the loader.
    sigma_noise: observation noise of the Gaussian likelihood (regression only).
    seed: seeds the weight noise and the loader's shuffling during `fit` (the global RNG is restored after).
    cosine: decay the learning rate from `lr` to 0 along a half cosine over all steps.
    progress: show a tqdm bar over the steps with the running loss.

    >>> vi = MeanFieldVI(nn.Sequential(nn.Linear(4, 2)), prior_std=1.0, progress=False)
    >>> batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    >>> vi.fit(batches, epochs=3).posterior.meta["method"]
    'vi'
    """

    def __init__(
        self,
        model: Any,
        likelihood: str | Likelihood = "classification",
        *,
        family: Family | str | None = None,
        prior_std: float = 0.1,
        init_std: float = 1e-3,
        lr: float = 1e-3,
        kl_anneal: float = 0.5,
        n_data: int | None = None,
        sigma_noise: float = 1.0,
        seed: int = 0,
        cosine: bool = True,
        progress: bool = True,
    ) -> None:
        self.likelihood = Likelihood.parse(likelihood)
        module, self.family, self.model_key = _resolve(model, family)
        self.prior_std = _positive("prior_std", prior_std)
        self.init_std = _positive("init_std", init_std)
        self.lr = _positive("lr", lr)
        self.sigma_noise = _positive("sigma_noise", sigma_noise)
        if not (isinstance(kl_anneal, int | float) and 0 <= kl_anneal <= 1):
            raise UserError(f"kl_anneal={kl_anneal!r}: must be a fraction of the steps in [0, 1]")
        self.kl_anneal = float(kl_anneal)
        if n_data is not None and (isinstance(n_data, bool) or not isinstance(n_data, int) or n_data < 1):
            raise UserError(f"n_data={n_data!r}: must be a positive integer (or None: the examples in the loader)")
        self.n_data = n_data
        self.seed, self.cosine, self.progress = int(seed), bool(cosine), bool(progress)

        modules = self.family.quantizable_modules(module)
        if not modules:
            raise UserError(
                f"model: {type(module).__name__} has no quantizable layers (Linear/Conv2d) under family "
                f"{self.family.name!r}; mean-field VI needs at least one"
            )
        check_finite_weights(modules)
        self.layers: dict[str, BayesLayer] = to_bayesian(module, modules, self.init_std, self.prior_std)
        # The model itself is a Linear/Conv2d: its Bayesian replacement is the model.
        self.model: nn.Module = self.layers.get("", module)
        self.epochs = 0
        self.seconds = 0.0
        self.final_loss = float("nan")
        self._fitted_n_data: int | None = None

    # ------------------------------------------------------------------ fit
    def _trainable(self) -> list[nn.Parameter]:
        params = []
        for layer in self.layers.values():
            params += [layer.mu, layer.rho] + ([layer.bias] if layer.bias is not None else [])
        return params

    def fit(self, loader: Iterable, epochs: int = 1, on_epoch_end: Callable[[int], None] | None = None) -> MeanFieldVI:
        """Run `epochs` passes of Adam over `loader` (re-iterable: a list of batches or a DataLoader).
        `on_epoch_end(epoch)` is called after each pass (e.g. to score a validation set and keep the best
        `posterior`); it runs outside the training random stream."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise UserError(f"epochs={epochs!r}: must be a positive integer")
        n_batches, n_examples = _count(loader, self.likelihood, need_examples=self.n_data is None)
        if n_batches == 0:
            raise UserError("loader: the loader yielded no batches; give it at least one batch of data")
        n_data = self.n_data or n_examples
        total = n_batches * epochs
        anneal_steps = self.kl_anneal * total
        device, dtype = placement(self.model)  # once: the batches below are moved there

        trainable = self._trainable()
        ids = {id(p) for p in trainable}
        frozen = {p: p.requires_grad for p in self.model.parameters() if id(p) not in ids}
        was_training = self.model.training
        opt = torch.optim.Adam(trainable, lr=self.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)) if self.cosine else 1.0
        )
        start = time.perf_counter()
        step, loss_sum, loss_n = 0, torch.zeros((), device=device), 0
        bar = tqdm(total=total, desc="vi", unit="step", mininterval=1.0, disable=not self.progress, leave=False)
        devices = [device] if device.type == "cuda" else []
        try:
            for p in frozen:
                p.requires_grad_(False)
            for p in trainable:
                p.requires_grad_(True)
            self.model.eval()  # BatchNorm/dropout as pretrained; Bayesian layers sample in eval mode too
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                for epoch in range(epochs):
                    for batch in loader:
                        inputs, targets = split_batch(to_model(batch, device=device, dtype=dtype), self.likelihood)
                        output = forward(self.model, inputs, self.likelihood)
                        nll = nll_from_output(output, targets, self.likelihood, self.sigma_noise).mean()
                        beta = min(1.0, (step + 1) / anneal_steps) if anneal_steps > 0 else 1.0
                        # negative ELBO / N (Blundell et al. 2015 eq. 2 with the KL in closed form)
                        loss = nll + beta * kl_divergence(self.model).to(nll.dtype) / n_data
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        sched.step()
                        step += 1
                        loss_sum, loss_n = loss_sum + loss.detach().float(), loss_n + 1
                        bar.update()
                        if step % 50 == 0 or step == total:  # a host sync only every 50 steps
                            running = float(loss_sum) / loss_n
                            if not math.isfinite(running):
                                raise UserError(
                                    f"lr={self.lr:g}: the loss became {running:g} by step {step}; use a smaller lr "
                                    "or a smaller init_std"
                                )
                            bar.set_postfix(loss=f"{running:.4g}", beta=f"{beta:.2f}")
                            loss_sum, loss_n = torch.zeros((), device=device), 0
                    if on_epoch_end is not None and step > 0:
                        self._fitted_n_data = n_data  # the posterior is readable inside the callback
                        with torch.random.fork_rng(devices=devices), torch.no_grad():
                            on_epoch_end(epoch)
            if step == 0:
                raise UserError("loader: the loader yielded no batches; give it at least one batch of data")
            self.final_loss = float(loss.detach())
        finally:
            bar.close()
            for p, flag in frozen.items():
                p.requires_grad_(flag)
            self.model.train(was_training)
        if not math.isfinite(self.final_loss):
            raise UserError(f"lr={self.lr:g}: the final loss is {self.final_loss:g}; use a smaller lr or init_std")
        self.epochs += epochs
        self.seconds += time.perf_counter() - start
        self._fitted_n_data = n_data
        log.info("mean-field VI: %d steps, final loss %.4g, %.1f s", step, self.final_loss, self.seconds)
        return self

    def _check_fitted(self) -> None:
        if self._fitted_n_data is None:
            raise NotFittedError("MeanFieldVI: call fit(loader) before using the posterior or predict()")

    # ------------------------------------------------------------------ use
    @torch.no_grad()
    def predict(self, *inputs: torch.Tensor, samples: int = 16) -> torch.Tensor:
        """Posterior-predictive mean over `samples` weight draws: softmax probabilities (B, C) (or (B, T, V)
        for causal_lm), or the mean prediction for regression."""
        self._check_fitted()
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise UserError(f"samples={samples!r}: must be a positive integer")
        inputs = to_model(inputs, self.model)
        was_training = self.model.training
        self.model.eval()
        try:
            total = None
            for _ in range(samples):
                out = forward(self.model, inputs, self.likelihood)
                if self.likelihood != Likelihood.REGRESSION:
                    out = out.float().softmax(-1)
                total = out if total is None else total + out
        finally:
            self.model.train(was_training)
        return total / samples

    @property
    def posterior(self) -> Posterior:
        """N(μ, σ²) of every converted weight, keyed by qualified module name (detached copies)."""
        self._check_fitted()
        mean = {n: layer.mu.detach().clone() for n, layer in self.layers.items()}
        var = {n: layer.sigma.detach().square() for n, layer in self.layers.items()}
        meta = {
            "method": "vi",
            "likelihood": self.likelihood.value,
            "prior_std": self.prior_std,
            "init_std": self.init_std,
            "lr": self.lr,
            "kl_anneal": self.kl_anneal,
            "cosine": self.cosine,
            "epochs": self.epochs,
            "n_data": self._fitted_n_data,
            "sigma_noise": self.sigma_noise,
            "seed": self.seed,
            "final_loss": self.final_loss,
            "family": self.family.name,
            "model": self.model_key,
            "seconds": round(self.seconds, 3),
        }
        return Posterior(mean, var, meta)


def bayesian_from_posterior(
    model: Any, post: Posterior, family: Family | str | None = None, prior_std: float | None = None
) -> nn.Module:
    """Convert a deterministic model (in place) into Bayesian layers carrying μ and σ from a saved posterior,
    e.g. to evaluate a VI posterior with T Monte-Carlo forward passes. Returns the model (the new layer itself
    when the model is a single Linear/Conv2d). prior_std (only used by `kl()`) defaults to the posterior's.

    >>> post = Posterior.load("lenet.vi.safetensors")  # doctest: +SKIP
    >>> bnn = bayesian_from_posterior(load_model("lenet-mnist"), post)  # doctest: +SKIP
    >>> probs = torch.stack([bnn(x).softmax(-1) for _ in range(16)]).mean(0)  # doctest: +SKIP
    """
    module, family, _ = _resolve(model, family)
    modules = family.quantizable_modules(module)
    post.check_model(modules)
    prior = _positive("prior_std", prior_std if prior_std is not None else post.meta.get("prior_std", 0.1))
    layers = to_bayesian(module, modules, init_std=1.0, prior_std=prior)
    for name, layer in layers.items():
        layer.set_posterior(post.mean[name], post.var[name])
    return layers.get("", module)
