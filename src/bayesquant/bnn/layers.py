"""Mean-field Gaussian Bayesian layers: `BayesLinear` and `BayesConv2d`.

Every weight has its own Gaussian q(w) = N(μ, σ²) with σ = softplus(ρ) (Blundell et al. 2015, "Weight
Uncertainty in Neural Networks", §3.2), under the prior p(w) = N(0, prior_std²). Biases stay deterministic.
The forward pass uses the local reparameterization trick (Kingma, Salimans & Welling 2015, "Variational
Dropout and the Local Reparameterization Trick", §2.3, eq. 6): instead of sampling a weight matrix, it samples
the pre-activations, which are Gaussian given the input:

    Linear:  b_j ~ N(γ_j, δ_j),  γ = x μᵀ + bias,  δ = x² (σ²)ᵀ
    Conv2d:  the same with γ = conv(x, μ) + bias,  δ = conv(x², σ²)

so one forward pass costs two matrix products and the gradient noise is lower than with one shared weight
sample per batch. Layers sample in train *and* eval mode (Monte-Carlo prediction runs `model.eval()` and then
T forward passes); `deterministic(model)` switches every layer to its mean μ.

>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> layers = to_bayesian(model, {"0": model[0], "2": model[2]}, init_std=1e-3, prior_std=0.1)
>>> type(model[0]).__name__, tuple(model[0].weight.shape)
('BayesLinear', (8, 4))
>>> with deterministic(model):
...     out = model(torch.zeros(3, 4))  # μ only: the pretrained network's output
>>> bool(kl_divergence(model) > 0)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BayesConv2d",
    "BayesLayer",
    "BayesLinear",
    "bayesian_layers",
    "deterministic",
    "inverse_softplus",
    "kl_divergence",
    "kl_normal",
    "to_bayesian",
]

# Added to the pre-activation variance before the square root: keeps the gradient of sqrt finite where the
# variance is exactly 0 (an all-zero input patch, e.g. after a ReLU or in the zero padding).
_VAR_EPS = 1e-16


def inverse_softplus(sigma: Tensor) -> Tensor:
    """ρ with softplus(ρ) = σ, computed as σ + log(1 − e^{−σ}) (no overflow for large σ, exact for tiny σ)."""
    s = sigma.double()
    return s + torch.log(-torch.expm1(-s))


def kl_normal(mu: Tensor, sigma: Tensor, prior_std: float) -> Tensor:
    """Σ KL(N(μ, σ²) ‖ N(0, p²)) = Σ [log(p/σ) + (σ² + μ²)/(2p²) − ½], accumulated in float64 (a scalar).

    Blundell et al. 2015 (eq. 2) estimate this term by sampling; for a Gaussian prior it has this closed form.
    """
    mu, sigma = mu.double(), sigma.double()
    p2 = float(prior_std) ** 2
    return (torch.log(prior_std / sigma) + (sigma.square() + mu.square()) / (2 * p2) - 0.5).sum()


class BayesLayer(nn.Module):
    """Shared parameters and behaviour of the mean-field layers.

    Parameters: `mu` (the weight's shape), `rho` (σ = softplus(ρ), same shape) and a deterministic `bias`
    (or None). `sample = False` makes the forward pass use μ only. `weight` is a read-only view of μ, so code
    written for nn.Linear / nn.Conv2d (shapes, Posterior.check_model) keeps working.
    """

    mu: nn.Parameter
    rho: nn.Parameter
    bias: nn.Parameter | None

    def __init__(self, mu: Tensor, sigma: Tensor, bias: Tensor | None, prior_std: float) -> None:
        super().__init__()
        if not prior_std > 0:
            raise ValueError(f"prior_std={prior_std!r}: must be positive")
        self.mu = nn.Parameter(mu.detach().clone())
        self.rho = nn.Parameter(inverse_softplus(sigma.detach()).to(mu.dtype))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.prior_std = float(prior_std)
        self.sample = True

    @property
    def weight(self) -> Tensor:
        """The posterior mean μ (read-only alias, for code that expects an nn.Linear / nn.Conv2d)."""
        return self.mu

    def __setattr__(self, name: str, value: object) -> None:
        if name == "weight":  # nn.Module would otherwise register a second tensor beside μ
            raise AttributeError(f"{type(self).__name__}.weight is read-only (it is μ): copy into `.mu` instead")
        super().__setattr__(name, value)

    @property
    def sigma(self) -> Tensor:
        """σ = softplus(ρ), the weight's posterior standard deviation (differentiable)."""
        return F.softplus(self.rho)

    def set_posterior(self, mean: Tensor, var: Tensor) -> None:
        """Overwrite μ and σ (in place, no gradient) from a posterior's mean and variance."""
        with torch.no_grad():
            self.mu.copy_(mean.to(self.mu))
            self.rho.copy_(inverse_softplus(var.double().sqrt()).to(self.rho))

    def kl(self) -> Tensor:
        """KL(q(w) ‖ p(w)) summed over the weights (float64 scalar; the bias has no prior)."""
        return kl_normal(self.mu, self.sigma, self.prior_std)

    def mean_forward(self, x: Tensor) -> Tensor:
        """γ: the output with the weight at μ (what `deterministic` returns)."""
        raise NotImplementedError(f"{type(self).__name__} must implement mean_forward")

    def var_forward(self, x: Tensor) -> Tensor:
        """δ: the variance of each output element under q(w) for this input."""
        raise NotImplementedError(f"{type(self).__name__} must implement var_forward")

    def forward(self, x: Tensor) -> Tensor:
        mean = self.mean_forward(x)
        if not self.sample:
            return mean
        # Kingma et al. 2015 eq. 6: one Gaussian draw per output element.
        return mean + torch.sqrt(self.var_forward(x) + _VAR_EPS) * torch.randn_like(mean)

    def extra_repr(self) -> str:
        return f"{tuple(self.mu.shape)}, bias={self.bias is not None}, prior_std={self.prior_std:g}"


class BayesLinear(BayesLayer):
    """Mean-field Gaussian nn.Linear with the local reparameterization trick.

    >>> layer = BayesLinear.from_module(nn.Linear(3, 2), init_std=1e-3, prior_std=0.1)
    >>> layer(torch.ones(5, 3)).shape
    torch.Size([5, 2])
    """

    def __init__(self, mu: Tensor, sigma: Tensor, bias: Tensor | None, prior_std: float) -> None:
        super().__init__(mu, sigma, bias, prior_std)
        self.out_features, self.in_features = mu.shape

    @classmethod
    def from_module(cls, module: nn.Linear, init_std: float, prior_std: float) -> BayesLinear:
        """μ = the module's weight, σ = init_std everywhere, bias copied."""
        return cls(module.weight, torch.full_like(module.weight, init_std), module.bias, prior_std)

    def mean_forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.mu, self.bias)  # (..., out)

    def var_forward(self, x: Tensor) -> Tensor:
        return F.linear(x.square(), self.sigma.square())  # (..., out): Σ_i x_i² σ_ji²


class BayesConv2d(BayesLayer):
    """Mean-field Gaussian nn.Conv2d with the local reparameterization trick (stride, padding, dilation,
    groups and padding mode as in the source module)."""

    def __init__(
        self,
        mu: Tensor,
        sigma: Tensor,
        bias: Tensor | None,
        prior_std: float,
        *,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] | str = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(mu, sigma, bias, prior_std)
        self.out_channels = mu.shape[0]
        self.in_channels = mu.shape[1] * groups
        self.kernel_size = tuple(mu.shape[2:])
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.padding_mode = padding_mode
        if padding_mode != "zeros":
            if isinstance(padding, str):
                raise ValueError(f"padding={padding!r} with padding_mode={padding_mode!r} is not supported")
            # F.pad takes (left, right, top, bottom), the reverse of (h, w), each repeated twice
            self._pad = tuple(p for p in reversed(padding) for _ in range(2))

    @classmethod
    def from_module(cls, module: nn.Conv2d, init_std: float, prior_std: float) -> BayesConv2d:
        """μ = the module's weight, σ = init_std everywhere, bias and convolution settings copied."""
        return cls(
            module.weight,
            torch.full_like(module.weight, init_std),
            module.bias,
            prior_std,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            padding_mode=module.padding_mode,
        )

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def mean_forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.mu, self.bias)  # (B, out, H', W')

    def var_forward(self, x: Tensor) -> Tensor:
        # Every padding mode commutes with squaring (zeros stay zeros, reflect/replicate/circular copy values).
        return self._conv(x.square(), self.sigma.square(), None)  # (B, out, H', W')

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}"
        )


_BAYES_TYPES: dict[type[nn.Module], type[BayesLayer]] = {nn.Linear: BayesLinear, nn.Conv2d: BayesConv2d}


def _bayes_type(module: nn.Module) -> type[BayesLayer]:
    for base, bayes in _BAYES_TYPES.items():
        if isinstance(module, base):
            return bayes
    raise TypeError(f"{type(module).__name__}: only nn.Linear and nn.Conv2d have a Bayesian counterpart")


def to_bayesian(
    model: nn.Module, modules: dict[str, nn.Module], init_std: float, prior_std: float
) -> dict[str, BayesLayer]:
    """Replace every module of `modules` (qualified name → nn.Linear / nn.Conv2d of `model`) in place by its
    Bayesian counterpart; returns qualified name → new layer.

    The root cannot be replaced in place: when `modules` holds "" (the model itself is a Linear/Conv2d), the
    returned dict's "" entry is the new layer, and the caller uses it instead of `model`.

    >>> model = nn.Sequential(nn.Linear(4, 2))
    >>> to_bayesian(model, {"0": model[0]}, init_std=1e-3, prior_std=0.1)["0"] is model[0]
    True
    """
    new: dict[str, BayesLayer] = {}
    for name, module in modules.items():
        layer = _bayes_type(module).from_module(module, init_std, prior_std)  # type: ignore[arg-type]
        if name:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            if getattr(parent, child, None) is not module:
                raise ValueError(f"{name}: not the module found at that path of the model")
            setattr(parent, child, layer)
        new[name] = layer
    return new


def bayesian_layers(model: nn.Module) -> dict[str, BayesLayer]:
    """Qualified name → every BayesLayer of `model` (the model itself included, under "")."""
    return {name: m for name, m in model.named_modules() if isinstance(m, BayesLayer)}


def kl_divergence(model: nn.Module) -> Tensor:
    """Σ over the Bayesian layers of KL(q ‖ p) (float64 scalar; 0 when there are none)."""
    total = torch.zeros((), dtype=torch.float64)
    for layer in bayesian_layers(model).values():
        total = total.to(layer.mu.device) + layer.kl()
    return total


@contextmanager
def deterministic(model: nn.Module) -> Iterator[None]:
    """Within the block every Bayesian layer of `model` uses its mean μ (no sampling); restored afterwards.

    >>> with deterministic(model):  # doctest: +SKIP
    ...     logits = model(x)  # the network at its posterior mean
    """
    layers = list(bayesian_layers(model).values())
    saved = [layer.sample for layer in layers]
    try:
        for layer in layers:
            layer.sample = False
        yield
    finally:
        for layer, flag in zip(layers, saved, strict=True):
            layer.sample = flag
