"""Quantized Bayesian neural networks that keep their uncertainty: VPQ, SPQ and JQ (QBNN, arXiv 2512.10602).

A mean-field Gaussian BNN, q(w) = Π N(μ_i, σ_i²) with σ = softplus(ρ) (Blundell et al. 2015), is quantized at
up to three places (the paper's Fig. 2):

    VPQ  variational parameters:  μ̂ = Q_B1(μ)  uniform,   σ̂ = Q_B2(σ)  logarithmic (uniform as an ablation)
    SPQ  sampled weights:         ŵ = Q_A(w),  w = μ + σ·ε, ε ~ N(0, I)   uniform, one draw per forward pass
    JQ   both:                    ŵ = Q_A(μ̂ + σ̂·ε)

with the uniform grid Q(x) = s·(clamp(round(x/s) + z, 0, 2ᵇ − 1) − z) fitted min–max per output row (or per
tensor), and the log grid Q(σ) = exp(ℓ₀ + Δ·clamp(round((log σ − ℓ₀)/Δ), 0, 2ᵇ − 1)), Δ = (log σ_max − log σ_min)
/ (2ᵇ − 1), whose relative error is bounded, e^{−Δ/2} ≤ Q(σ)/σ ≤ e^{Δ/2} (`quantizers/log.py`). Gradients pass
every quantizer unchanged (straight-through estimator, Bengio et al. 2013): Q(x) in the forward pass,
∂Q/∂x = I in the backward pass. Without SPQ a layer samples its pre-activations instead of its weights (local
reparameterization, Kingma et al. 2015, eq. 6): b ~ N(x μ̂ᵀ, x² σ̂²ᵀ); with SPQ it samples the weights (one draw
per forward pass, shared by the batch), because the quantizer acts on them.

Training has two stages (paper §IV): deterministic pretraining, then the quantized BNN with μ initialised at the
pretrained weights, minimising the negative ELBO per data point

    L = (1/B) Σ_batch −log p(y | x, ŵ) + β_t · KL(q(μ, σ) ‖ N(0, p²)) / N,   β_t = min(1, t / (κ·T))  (KL annealing)

with the KL in closed form on the latent (float) μ, σ, as quantization-aware training regularises the latent
weights. μ and the sampled weights are clipped to [−c, c] before quantization (paper: c = 1). Prediction
averages T Monte-Carlo passes; the uncertainty decomposition (Depeweg et al. 2018) is

    H[p̄] = −Σ_c p̄_c log p̄_c,  p̄ = (1/T) Σ_t p_t      total (predictive entropy)
    E[H]  = (1/T) Σ_t H[p_t]                           aleatoric ("softmax entropy")
    MI    = H[p̄] − E[H]                                epistemic (mutual information)

AUROC_aleatoric tells Ambiguous-MNIST from MNIST by E[H]; AUROC_epistemic tells Fashion-MNIST from MNIST ∪
Ambiguous by MI (scikit-learn's roc_auc_score). `save_qbnn` stores b-bit codes of μ̂ and σ̂ (VPQ, JQ) or float32
μ, σ (float, SPQ) and measures the bytes written against the same model written in float32 (`qbnn_io.py`).

>>> cfg = NetConfig("mlp")
>>> model = QBNN.from_pretrained(build_net(cfg), cfg, QuantConfig("jq", mu_bits=4, sigma_bits=4, sample_bits=4))
>>> model(torch.rand(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bayesquant.bnn.layers import _VAR_EPS, BayesConv2d, BayesLayer, BayesLinear, kl_divergence
from bayesquant.errors import UserError
from bayesquant.eval import metrics as M
from bayesquant.models.nets import MNIST_STATS, Normalize
from bayesquant.paths import save_png
from bayesquant.quantizers import fit_log, fit_uniform, ste
from bayesquant.quantizers.log import dequantize_log, quantize_log
from bayesquant.quantizers.uniform import UniformParams, dequantize_uniform, quantize_uniform

__all__ = [
    "QBNN",
    "Activation",
    "Arch",
    "Granularity",
    "NetConfig",
    "QBayesConv2d",
    "QBayesLinear",
    "QuantConfig",
    "QuantMode",
    "SigmaQuantizer",
    "build_net",
    "plot_uncertainty",
    "predict_samples",
    "pretrain",
    "train_qbnn",
    "uncertainty_report",
]

E = TypeVar("E", bound=Enum)


class QuantMode(str, Enum):
    """Where the BNN is quantized (paper Fig. 2): nowhere, variational parameters, sampled weights, or both."""

    FLOAT = "float"
    VPQ = "vpq"
    SPQ = "spq"
    JQ = "jq"

    @property
    def vpq(self) -> bool:
        return self in (QuantMode.VPQ, QuantMode.JQ)

    @property
    def spq(self) -> bool:
        return self in (QuantMode.SPQ, QuantMode.JQ)


class SigmaQuantizer(str, Enum):
    """Quantizer B2 of σ: logarithmic (the paper's choice) or uniform (ablation)."""

    LOG = "log"
    UNIFORM = "uniform"


class Granularity(str, Enum):
    """One grid per output row (channel) or per tensor."""

    CHANNEL = "channel"
    TENSOR = "tensor"


class Activation(str, Enum):
    SOFTPLUS = "softplus"
    RELU = "relu"


class Arch(str, Enum):
    MLP = "mlp"  # 784 → 100 → 100 → 10 (the paper's network)
    LENET = "lenet"  # LeNet-5: conv 6, conv 16, fc 120, fc 84, fc 10


def parse_enum(cls: type[E], value: Any, name: str) -> E:
    """`value` as a member of the str-Enum `cls`, or a UserError naming the argument and listing the valid names."""
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        valid = ", ".join(m.value for m in cls)
        raise UserError(f"{name}={value!r}: unknown; valid: {valid}") from None


def _check_bits(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        raise UserError(f"{name}={value!r}: must be an integer bit-width in 1..8")
    return value


@dataclass(frozen=True)
class QuantConfig:
    """How a QBNN is quantized; each quantizer's bit-width is separate.

    mode: float | vpq | spq | jq. mu_bits: B1 (uniform on μ). sigma_bits: B2 (σ). sample_bits: A (uniform on
    each sampled weight). sigma_quantizer: log | uniform. granularity: channel (a grid per output row) | tensor.
    symmetric: the uniform grids span ±max|x| (GPTQ's mid-tread grid) instead of min–max. weight_clip: clip μ
    and the sampled weights to [−c, c] before quantizing (None: no clipping). fixed_range: the grids of μ and of
    the sampled weights are one fixed grid per tensor, 2ᵇ levels evenly spaced over [−c, c] (c = weight_clip,
    1 without clipping) — the paper's quantizer, which collapses at 2 bits; the default adapts each grid to
    its row's min–max. weight_sampling: draw whole weight matrices (one per batch) in float and VPQ modes too,
    as SPQ and JQ must, instead of the local reparameterization — the float reference trained the way
    SPQ/JQ are.
    """

    mode: QuantMode | str = QuantMode.JQ
    mu_bits: int = 4
    sigma_bits: int = 4
    sample_bits: int = 4
    sigma_quantizer: SigmaQuantizer | str = SigmaQuantizer.LOG
    granularity: Granularity | str = Granularity.CHANNEL
    symmetric: bool = False
    weight_clip: float | None = 1.0
    fixed_range: bool = False
    weight_sampling: bool = False
    version: int = 1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "mode", parse_enum(QuantMode, self.mode, "mode"))
        set_(self, "sigma_quantizer", parse_enum(SigmaQuantizer, self.sigma_quantizer, "sigma_quantizer"))
        set_(self, "granularity", parse_enum(Granularity, self.granularity, "granularity"))
        for name in ("mu_bits", "sigma_bits", "sample_bits"):
            _check_bits(getattr(self, name), name)
        if self.weight_clip is not None and not (math.isfinite(self.weight_clip) and self.weight_clip > 0):
            raise UserError(f"weight_clip={self.weight_clip!r}: must be a positive number or None (no clipping)")
        if self.version != 1:
            raise UserError(f"version={self.version!r}: this bayesquant reads QuantConfig version 1")

    def to_dict(self) -> dict[str, Any]:
        return {k: v.value if isinstance(v, Enum) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        return cls(**d)

    def label(self) -> str:
        """A short name such as "jq-4/4/4" (μ/σ/sample bits of the quantizers in use)."""
        m = self.mode
        ws = "-ws" if self.weight_sampling and not m.spq else ""  # weights drawn whole (not the LRT)
        if m == QuantMode.FLOAT:
            return f"float{ws}"
        parts = ([str(self.mu_bits), str(self.sigma_bits)] if m.vpq else []) + (
            [str(self.sample_bits)] if m.spq else []
        )
        return f"{m.value}-{'/'.join(parts)}{ws}"

    def slug(self) -> str:
        """`label()` usable in a file name ("jq-4_4_4")."""
        return self.label().replace("/", "_")


@dataclass(frozen=True)
class NetConfig:
    """The network: arch mlp | lenet, activation softplus | relu, hidden widths (mlp), biases (paper: none)."""

    arch: Arch | str = Arch.MLP
    activation: Activation | str = Activation.SOFTPLUS
    hidden: tuple[int, ...] = (100, 100)
    bias: bool = False
    num_classes: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", parse_enum(Arch, self.arch, "arch"))
        object.__setattr__(self, "activation", parse_enum(Activation, self.activation, "activation"))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise UserError(f"hidden={self.hidden!r}: must be a non-empty list of positive layer widths")

    def to_dict(self) -> dict[str, Any]:
        return {k: v.value if isinstance(v, Enum) else v for k, v in dataclasses.asdict(self).items()}


def build_net(cfg: NetConfig) -> nn.Sequential:
    """The deterministic network of `cfg` (stage 1), taking MNIST images in [0, 1] and returning logits."""
    act = {Activation.SOFTPLUS: nn.Softplus, Activation.RELU: nn.ReLU}[cfg.activation]
    b = cfg.bias
    layers: list[nn.Module] = [Normalize(*MNIST_STATS)]
    if cfg.arch == Arch.MLP:
        layers.append(nn.Flatten())
        width = 784
        for h in cfg.hidden:
            layers += [nn.Linear(width, h, bias=b), act()]
            width = h
        layers.append(nn.Linear(width, cfg.num_classes, bias=b))
    else:
        layers += [
            nn.Conv2d(1, 6, 5, padding=2, bias=b), act(), nn.MaxPool2d(2),  # (6, 14, 14)
            nn.Conv2d(6, 16, 5, bias=b), act(), nn.MaxPool2d(2),  # (16, 5, 5)
            nn.Flatten(), nn.Linear(400, 120, bias=b), act(), nn.Linear(120, 84, bias=b), act(),
            nn.Linear(84, cfg.num_classes, bias=b),
        ]  # fmt: skip
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- quantizers (pure, no gradient)


def _rows(w: Tensor, granularity: Granularity) -> Tensor:
    """w as (rows, cols): one row per output channel, or one row for the tensor."""
    return w.reshape(w.shape[0] if granularity == Granularity.CHANNEL else 1, -1)


def uniform_grid(w2: Tensor, bits: int, symmetric: bool, fixed: float | None = None) -> UniformParams:
    """The grid of each row of w2: min–max (or ±max|w|), or with `fixed` = c the 2ᵇ levels evenly spaced over
    [−c, c] (mid-rise: scale 2c/(2ᵇ − 1), zero (2ᵇ − 1)/2), the same for every row."""
    if fixed is None:
        return fit_uniform(w2, bits, symmetric=symmetric)
    maxq = 2**bits - 1
    rows = w2.shape[0]
    return UniformParams(w2.new_full((rows, 1), 2 * fixed / maxq), w2.new_full((rows, 1), maxq / 2), bits, True)


def _fixed(q: QuantConfig) -> float | None:
    return (q.weight_clip or 1.0) if q.fixed_range else None


@torch.no_grad()
def fake_quant_uniform(
    w: Tensor, bits: int, granularity: Granularity, symmetric: bool, fixed: float | None = None
) -> Tensor:
    """Q(w) on a min–max (or ±max|w|, or fixed [−c, c]) uniform grid per row or tensor, in w's shape and dtype."""
    w2 = _rows(w.detach(), Granularity.TENSOR if fixed is not None else granularity)
    p = uniform_grid(w2, bits, symmetric, fixed)
    return dequantize_uniform(quantize_uniform(w2, p), p).to(w.dtype).reshape(w.shape)


@torch.no_grad()
def fake_quant_log(sigma: Tensor, bits: int, granularity: Granularity) -> Tensor:
    """Q(σ) on a uniform grid of log σ between each row's (or the tensor's) min and max."""
    s2 = _rows(sigma.detach(), granularity).clamp_min(torch.finfo(sigma.dtype).tiny)
    p = fit_log(s2, bits)
    return dequantize_log(quantize_log(s2, p), p).to(sigma.dtype).reshape(sigma.shape)


def _quant_sigma(sigma: Tensor, q: QuantConfig) -> Tensor:
    if q.sigma_quantizer == SigmaQuantizer.LOG:
        return fake_quant_log(sigma, q.sigma_bits, q.granularity)
    return fake_quant_uniform(sigma, q.sigma_bits, q.granularity, q.symmetric)


# ---------------------------------------------------------------- layers


class QBayesLayer(BayesLayer):
    """A mean-field layer with the VPQ / SPQ quantizers of `quant` in its forward pass (straight-through).

    `freeze()` fixes μ̂, σ̂ to the values decoded from their stored codes (what `save_qbnn` writes), so that a
    frozen model and the model loaded back from disk compute exactly the same function.
    """

    quant: QuantConfig
    mu_hat: Tensor | None
    sigma_hat: Tensor | None
    draws: int = 1  # whole-weight draws per training batch (set by `train_qbnn`); one at evaluation

    def _init_quant(self, quant: QuantConfig) -> None:
        self.quant = quant
        self.register_buffer("mu_hat", None, persistent=False)
        self.register_buffer("sigma_hat", None, persistent=False)

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _op")

    def _clip(self, w: Tensor) -> Tensor:
        c = self.quant.weight_clip
        return w if c is None else w.clamp(-c, c)

    def posterior(self) -> tuple[Tensor, Tensor]:
        """(μ̂, σ̂): the frozen values, else μ, σ through the VPQ quantizers with straight-through gradients."""
        if self.mu_hat is not None and self.sigma_hat is not None:
            return self.mu_hat, self.sigma_hat
        mu, sigma = self._clip(self.mu), self.sigma
        if self.quant.mode.vpq:
            q = self.quant
            mu = ste(mu, fake_quant_uniform(mu, q.mu_bits, q.granularity, q.symmetric, _fixed(q)))
            sigma = ste(sigma, _quant_sigma(sigma, q))
        return mu, sigma

    def _quant_sample(self, w: Tensor) -> Tensor:
        q = self.quant
        return ste(w, fake_quant_uniform(w, q.sample_bits, q.granularity, q.symmetric, _fixed(q)))

    def forward(self, x: Tensor) -> Tensor:
        mu, sigma = self.posterior()
        if not self.sample:  # the network at its (quantized) mean
            return self._op(x, self._quant_sample(mu) if self.quant.mode.spq else mu, self.bias)
        if self.quant.mode.spq or self.quant.weight_sampling:  # SPQ: draw the weights (then quantize them)
            parts = x.chunk(self.draws) if self.training and self.draws > 1 else (x,)
            return torch.cat([self._drawn(part, mu, sigma) for part in parts])
        mean = self._op(x, mu, self.bias)  # local reparameterization (Kingma et al. 2015, eq. 6)
        var = self._op(x.square(), sigma.square(), None)
        return mean + torch.sqrt(var + _VAR_EPS) * torch.randn_like(mean)

    def _drawn(self, x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
        """The layer at one draw of whole weights (quantized in SPQ / JQ) for every row of `x`."""
        w = self._clip(mu + sigma * torch.randn_like(mu))
        return self._op(x, self._quant_sample(w) if self.quant.mode.spq else w, self.bias)

    def freeze(self, mu_hat: Tensor, sigma_hat: Tensor) -> None:
        self.mu_hat, self.sigma_hat = mu_hat.detach().to(self.mu), sigma_hat.detach().to(self.mu)

    def unfreeze(self) -> None:
        self.mu_hat = self.sigma_hat = None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, quant={self.quant.label()}"


class QBayesLinear(QBayesLayer, BayesLinear):
    """`BayesLinear` with VPQ / SPQ quantization."""

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)


class QBayesConv2d(QBayesLayer, BayesConv2d):
    """`BayesConv2d` with VPQ / SPQ quantization."""

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self._conv(x, weight, bias)


class QBNN(nn.Module):
    """A quantized BNN: the network of `net_config` with every Linear/Conv2d a `QBayesLinear`/`QBayesConv2d`."""

    def __init__(self, net: nn.Sequential, net_config: NetConfig, quant: QuantConfig, prior_std: float) -> None:
        super().__init__()
        self.net, self.net_config, self.quant, self.prior_std = net, net_config, quant, float(prior_std)

    @classmethod
    def from_pretrained(
        cls,
        net: nn.Sequential,
        net_config: NetConfig,
        quant: QuantConfig,
        prior_std: float = 0.1,
        init_std: float = 0.02,
    ) -> QBNN:
        """Stage 2 start: a copy of the deterministic `net` with μ = its weights and σ = init_std everywhere."""
        if not (prior_std > 0 and init_std > 0):
            raise UserError(f"prior_std={prior_std!r}, init_std={init_std!r}: both must be positive")
        net = _copy(net)
        for name, module in list(net.named_modules()):
            if isinstance(module, nn.Linear):
                kind: type[QBayesLayer] = QBayesLinear
            elif isinstance(module, nn.Conv2d):
                kind = QBayesConv2d
            else:
                continue
            layer = kind.from_module(module, init_std, prior_std)
            layer._init_quant(quant)
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, layer)
        return cls(net, net_config, quant, prior_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def layers(self) -> dict[str, QBayesLayer]:
        return {n: m for n, m in self.net.named_modules() if isinstance(m, QBayesLayer)}

    def kl(self) -> Tensor:
        return kl_divergence(self.net)

    def set_quant(self, quant: QuantConfig) -> None:
        """Change the quantizers (e.g. post-training quantization of a float-trained BNN); unfreezes."""
        self.quant = quant
        for layer in self.layers().values():
            layer.quant = quant
            layer.unfreeze()

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix μ̂, σ̂ of every layer to what `save_qbnn` stores (codes decoded with their stored float16 grids)."""
        from bayesquant.bnn.qbnn_io import decode_layer, encode_layer  # the format imports this module

        for layer in self.layers().values():
            tensors, spec = encode_layer(layer)
            layer.freeze(*decode_layer(tensors, spec))

    def unfreeze(self) -> None:
        for layer in self.layers().values():
            layer.unfreeze()

    def n_weights(self) -> int:
        return sum(layer.mu.numel() for layer in self.layers().values())


def _copy(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net)


# ---------------------------------------------------------------- training


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def _check_epochs(epochs: Any, name: str = "epochs") -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise UserError(f"{name}={epochs!r}: must be a non-negative integer")
    return epochs


def pretrain(
    net: nn.Module, x: Tensor, y: Tensor, *, epochs: int = 5, lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:  # fmt: skip
    """Stage 1: deterministic training with Adam on cross-entropy (in place); returns {"loss", "seconds"}."""
    _check_epochs(epochs, "pretrain_epochs")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(y) / batch_size)
    start, loss = time.perf_counter(), torch.zeros(())
    net.train()
    with tqdm(total=steps, desc="pretrain", unit="step", disable=not progress, leave=False, mininterval=1.0) as bar:
        for _ in range(epochs):
            for idx in _batches(len(y), batch_size, gen):
                loss = F.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update()
            bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
    net.eval()
    return {"loss": float(loss.detach()), "seconds": time.perf_counter() - start}


def train_qbnn(
    model: QBNN, x: Tensor, y: Tensor, *, epochs: int = 5, lr: float = 1e-3, batch_size: int = 128,
    kl_anneal: float = 0.5, cosine: bool = True, seed: int = 0, draws: int = 1, sigma_lr: float | None = None,
    progress: bool = True,
) -> dict[str, float]:  # fmt: skip
    """Stage 2: quantization-aware BNN training (negative ELBO / N with KL annealing, Adam, cosine learning rate).

    sigma_lr: Adam's learning rate for the ρ of σ = softplus(ρ) (None: `lr`). Where whole weight matrices are
    drawn (SPQ, JQ, `weight_sampling`) the gradient of σ is far noisier than under the local reparameterization
    (Kingma et al. 2015, §2.3), Adam's steps on ρ shrink, and in a short schedule σ barely leaves its initial
    value; a larger `sigma_lr` compensates. draws: where whole weight matrices are drawn, each batch is split
    into `draws` equal parts with a weight draw of their own (one draw per example is what the local
    reparameterization emulates); the local reparameterization itself ignores it.

    β rises linearly from 0 to 1 over the first `kl_anneal` fraction of the steps. The weight noise and the
    batch order are seeded by `seed` (the global RNG is restored afterwards). Returns {"loss", "nll", "kl",
    "seconds", "seconds_per_epoch", "steps"}.
    """
    _check_epochs(epochs)
    if not 0 <= kl_anneal <= 1:
        raise UserError(f"kl_anneal={kl_anneal!r}: must be a fraction of the steps in [0, 1]")
    if sigma_lr is not None and not (isinstance(sigma_lr, int | float) and math.isfinite(sigma_lr) and sigma_lr > 0):
        raise UserError(f"sigma_lr={sigma_lr!r}: must be a positive number (or None: the same as lr)")
    if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= batch_size:
        raise UserError(f"draws={draws!r}: must be an integer from 1 to the batch size ({batch_size})")
    model.unfreeze()
    for layer in model.layers().values():
        layer.draws = draws
    n = len(y)
    total = max(1, epochs * math.ceil(n / batch_size))
    anneal = kl_anneal * total
    rho = [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "rho"]
    rest = [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] != "rho"]
    opt = torch.optim.Adam([{"params": rest}, {"params": rho, "lr": sigma_lr or lr}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)) if cosine else 1.0
    )
    gen = torch.Generator().manual_seed(seed)
    start, step = time.perf_counter(), 0
    nll = kl = loss = torch.zeros(())
    model.train()
    bar = tqdm(total=epochs * math.ceil(n / batch_size), desc=f"qbnn {model.quant.label()}", unit="step",
               disable=not progress, leave=False, mininterval=1.0)  # fmt: skip
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(epochs):
                for idx in _batches(n, batch_size, gen):
                    nll = F.cross_entropy(model(x[idx]), y[idx])
                    kl = model.kl().to(nll.dtype) / n
                    beta = min(1.0, (step + 1) / anneal) if anneal > 0 else 1.0
                    loss = nll + beta * kl  # negative ELBO / N (Blundell et al. 2015, eq. 2)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    step += 1
                    bar.update()
                    if step % 50 == 0:
                        running = float(loss.detach())
                        if not math.isfinite(running):
                            raise UserError(f"lr={lr:g}: the loss became {running} at step {step}; use a smaller lr")
                        bar.set_postfix(
                            nll=f"{float(nll.detach()):.4g}", kl=f"{float(kl.detach()):.3g}", beta=f"{beta:.2f}"
                        )
    finally:
        bar.close()
        model.eval()
        for layer in model.layers().values():
            layer.draws = 1
    seconds = time.perf_counter() - start
    return {"loss": float(loss.detach()), "nll": float(nll.detach()), "kl": float(kl.detach()), "seconds": seconds,
            "seconds_per_epoch": seconds / max(epochs, 1), "steps": step}  # fmt: skip


# ---------------------------------------------------------------- prediction and uncertainty


@torch.no_grad()
def predict_samples(
    model: nn.Module, x: Tensor, samples: int = 32, *, seed: int = 0, batch_size: int = 2048, progress: bool = False
) -> Tensor:
    """Softmax outputs of `samples` Monte-Carlo passes: (T, N, C) float32, seeded (global RNG restored)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UserError(f"samples={samples!r}: must be a positive integer (Monte-Carlo passes T)")
    was = model.training
    model.eval()
    out = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in tqdm(range(samples), desc="predict", unit="sample", disable=not progress, leave=False):
                out.append(torch.cat([model(x[i : i + batch_size]).softmax(-1) for i in range(0, len(x), batch_size)]))
    finally:
        model.train(was)
    return torch.stack(out)


def uncertainty_scores(sample_probs: Tensor) -> dict[str, Tensor]:
    """Per example (float64): "entropy" H[p̄] (total), "aleatoric" E[H] (softmax entropy), "mi" (epistemic)."""
    total = M.predictive_entropy(sample_probs)
    aleatoric = M.entropy(sample_probs).mean(0)
    return {"entropy": total, "aleatoric": aleatoric, "mi": (total - aleatoric).clamp_min(0.0)}


def uncertainty_report(sample_probs: Tensor, labels: Tensor, source: Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE on MNIST (source 0), mean uncertainties per source, and the two AUROCs of Dirty-MNIST.

    sample_probs (T, N, C); labels (N,) (ignored for Fashion-MNIST); source (N,) 0 MNIST, 1 Ambiguous,
    2 Fashion. An AUROC whose sets are absent is NaN.
    """
    probs = sample_probs.double().mean(0)
    s = uncertainty_scores(sample_probs)
    mnist, amb, fashion = (source == 0), (source == 1), (source == 2)
    out: dict[str, float] = {}
    if mnist.any():
        p, y = probs[mnist], labels[mnist]
        out |= {"accuracy": M.accuracy(p, y), "nll": M.nll(p, y), "ece": M.ece(p, y), "brier": M.brier(p, y)}
    if amb.any():
        out["accuracy_ambiguous"] = M.accuracy(probs[amb], labels[amb])
    for name, mask in (("mnist", mnist), ("ambiguous", amb), ("fashion", fashion)):
        if mask.any():
            for k in ("entropy", "aleatoric", "mi"):
                out[f"{k}_{name}"] = float(s[k][mask].mean())
    both = mnist | amb
    nan = float("nan")
    out["auroc_aleatoric"] = M.auroc(s["aleatoric"][both], amb[both]) if mnist.any() and amb.any() else nan
    out["auroc_aleatoric_total"] = M.auroc(s["entropy"][both], amb[both]) if mnist.any() and amb.any() else nan
    out["auroc_epistemic"] = M.auroc(s["mi"], fashion) if both.any() and fashion.any() else nan
    out["samples"] = int(sample_probs.shape[0])
    return out


def plot_uncertainty(
    sample_probs: Tensor, source: Tensor, path: str | Path, title: str = "", max_points: int = 2000, seed: int = 0
) -> Path:
    """Scatter of softmax entropy E[H] (x) vs mutual information (y), one colour per Dirty-MNIST source (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = uncertainty_scores(sample_probs)
    gen = torch.Generator().manual_seed(seed)
    fig, ax = plt.subplots(figsize=(5, 4))
    for k, (name, colour) in enumerate((("MNIST", "tab:blue"), ("Ambiguous-MNIST", "tab:orange"),
                                        ("Fashion-MNIST", "tab:green"))):  # fmt: skip
        idx = torch.nonzero(source == k).squeeze(1)
        if len(idx) == 0:
            continue
        idx = idx[torch.randperm(len(idx), generator=gen)[:max_points]]
        ax.scatter(s["aleatoric"][idx], s["mi"][idx], s=3, alpha=0.4, color=colour, label=name, rasterized=True)
    ax.set_xlabel("softmax entropy E[H] (aleatoric, nats)")
    ax.set_ylabel("mutual information (epistemic, nats)")
    ax.set_title(title, fontsize=9)
    ax.legend(markerscale=4, fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
