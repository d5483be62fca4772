"""Mean-field VI: Bayesian layers (local reparameterization, KL), the estimator, and its exactness on Bayesian
linear regression, where the mean-field optimum is known in closed form."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl
from torch.utils.data import DataLoader, TensorDataset

from bayesquant.bnn import BayesConv2d, BayesLinear, deterministic, kl_divergence, to_bayesian
from bayesquant.errors import UserError
from bayesquant.models import FAMILIES, LoadedModel, Task
from bayesquant.posterior import NotFittedError, Posterior
from bayesquant.posterior.vi import MeanFieldVI, bayesian_from_posterior

f64 = torch.float64


def _random_sigma(layer: BayesLinear | BayesConv2d, low: float = 0.05, high: float = 0.5) -> None:
    """Give every weight a different σ in [low, high] so that a wrong index pairing would show."""
    sigma = low + (high - low) * torch.rand(layer.mu.shape, dtype=layer.mu.dtype)
    layer.set_posterior(layer.mu.detach(), sigma.square())


def _check_moments(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
    """samples (S, *shape): empirical mean within 5 standard errors, variance within 6 % (S ≥ 20000: ~1 % s.e.)."""
    n = samples.shape[0]
    emp_mean, emp_var = samples.mean(0), samples.var(0)
    assert ((emp_mean - mean).abs() <= 5 * (var / n).sqrt() + 1e-12).all()
    torch.testing.assert_close(emp_var, var, rtol=0.06, atol=1e-12)


# ---------------------------------------------------------------- layers


def test_linear_local_reparameterization_moments():
    layer = BayesLinear.from_module(nn.Linear(6, 3).double(), init_std=1e-3, prior_std=0.1)
    _random_sigma(layer)
    x = torch.randn(4, 6, dtype=f64)
    n = 20000
    with torch.no_grad():
        out = layer(x.repeat(n, 1)).view(n, 4, 3)  # (S, B, out): an independent draw per row
    mean = x @ layer.mu.T + layer.bias  # (B, out)
    var = x.square() @ layer.sigma.square().T  # (B, out) = Σ_i x_i² σ_ji²
    _check_moments(out, mean.detach(), var.detach())


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_conv_local_reparameterization_moments(padding_mode):
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, padding_mode=padding_mode).double()
    layer = BayesConv2d.from_module(conv, init_std=1e-3, prior_std=0.1)
    assert (layer.stride, layer.padding, layer.groups) == ((2, 2), (1, 1), 2)
    _random_sigma(layer)
    x = torch.randn(2, 4, 5, 5, dtype=f64)
    n = 20000
    with torch.no_grad():
        out = layer(x.repeat(n, 1, 1, 1)).view(n, 2, 6, 3, 3)
        mean = conv(x)  # same μ (copied), same bias
        var_conv = copy.deepcopy(conv)  # conv of x² with σ², no bias, same padding semantics as nn.Conv2d
        var_conv.weight.copy_(layer.sigma.square())
        var_conv.bias = None
        var = var_conv(x.square())
    _check_moments(out, mean, var)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_deterministic_mode_is_the_mean_forward_and_tiny_std_is_the_module(kind):
    module = nn.Linear(5, 4) if kind == "linear" else nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 5) if kind == "linear" else torch.randn(2, 3, 6, 6)
    model = nn.Sequential(module)
    with torch.no_grad():
        ref = module(x)
    layers = to_bayesian(model, {"0": module}, init_std=1e-6, prior_std=0.1)
    _random_sigma(layers["0"], 0.5, 1.0)
    with torch.no_grad(), deterministic(model):
        assert layers["0"].sample is False
        assert torch.equal(model(x), ref)
    assert layers["0"].sample is True
    with torch.no_grad():
        assert not torch.allclose(model(x), ref, atol=1e-2)  # sampling again, with large σ

    fresh = nn.Sequential(copy.deepcopy(module))
    to_bayesian(fresh, {"0": fresh[0]}, init_std=1e-6, prior_std=0.1)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ref, rtol=0, atol=1e-4)


def test_layer_parameters_and_read_only_weight():
    lin = nn.Linear(3, 2)
    layer = BayesLinear.from_module(lin, init_std=0.02, prior_std=0.1)
    assert layer.weight is layer.mu and torch.equal(layer.mu, lin.weight) and layer.mu is not lin.weight
    torch.testing.assert_close(layer.sigma, torch.full((2, 3), 0.02))
    assert {n for n, _ in layer.named_parameters()} == {"mu", "rho", "bias"}
    with pytest.raises(AttributeError):
        layer.weight = nn.Parameter(torch.zeros(2, 3))
    no_bias = BayesLinear.from_module(nn.Linear(3, 2, bias=False), init_std=0.02, prior_std=0.1)
    assert no_bias.bias is None


def test_kl_matches_torch_distributions_and_monte_carlo():
    layer = BayesLinear.from_module(nn.Linear(7, 5).double(), init_std=1e-3, prior_std=0.3)
    _random_sigma(layer, 0.01, 0.6)
    mu, sigma = layer.mu.detach(), layer.sigma.detach()
    exact = torch_kl(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.full_like(mu, 0.3))).sum()
    assert layer.kl().dtype == f64
    torch.testing.assert_close(layer.kl(), exact, rtol=1e-12, atol=1e-12)
    # Monte Carlo: E_q[log q(w) − log p(w)], 20000 draws
    q, p = Normal(mu, sigma), Normal(0.0, 0.3)
    w = q.sample((20000,))
    terms = (q.log_prob(w) - p.log_prob(w)).sum((1, 2))
    assert abs(float(terms.mean() - exact)) < 5 * float(terms.std()) / math.sqrt(20000)
    # kl_divergence(model) sums over the layers, and is 0 without any
    model = nn.Sequential(layer, nn.ReLU(), BayesLinear.from_module(nn.Linear(5, 2).double(), 0.1, 0.3))
    torch.testing.assert_close(kl_divergence(model), layer.kl() + model[2].kl())
    assert float(kl_divergence(nn.Sequential(nn.ReLU()))) == 0.0


def test_to_bayesian_replaces_by_qualified_name():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2)))
    modules = FAMILIES["small-net"].quantizable_modules(model)
    assert list(modules) == ["0", "2.0", "2.1"]
    layers = to_bayesian(model, modules, init_std=1e-3, prior_std=0.1)
    assert isinstance(model[0], BayesConv2d) and isinstance(model[2][1], BayesLinear)
    assert layers["2.0"] is model[2][0]
    assert model(torch.randn(3, 1, 4, 4)).shape == (3, 2)


# ---------------------------------------------------------------- acceptance: Bayesian linear regression


def test_vi_recovers_the_mean_field_optimum_of_bayesian_linear_regression():
    """With y = Xw + ε, ε ~ N(0, s²) and w ~ N(0, p² I), the posterior is Gaussian with precision
    Λ = XᵀX/s² + I/p² and mean Λ⁻¹Xᵀy/s²; the best fully factorised q has the exact mean and σ_i = 1/√Λ_ii."""
    n, d, s, p = 200, 5, 0.5, 1.0
    gen = torch.Generator().manual_seed(1)
    scale = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.3], dtype=f64)  # unequal Λ_ii
    X = torch.randn(n, d, generator=gen, dtype=f64) * scale
    y = X @ torch.randn(d, generator=gen, dtype=f64) + s * torch.randn(n, generator=gen, dtype=f64)
    Lam = X.T @ X / s**2 + torch.eye(d, dtype=f64) / p**2
    post_mean = torch.linalg.solve(Lam, X.T @ y / s**2)
    sigma_mf = Lam.diagonal().rsqrt()

    model = nn.Linear(d, 1, bias=False).double()  # μ starts at a random init, far from the posterior mean
    # Each batch holds 8 copies of the data: the mean NLL is unchanged, but one step averages 8 independent
    # draws per example (less gradient noise); n_data = N keeps the objective the ELBO of the N points.
    k = 8
    loader = [(X.repeat(k, 1), y.repeat(k).unsqueeze(1))]
    vi = MeanFieldVI(
        model, "regression", prior_std=p, sigma_noise=s, init_std=1e-2, lr=1e-2, kl_anneal=0.0, n_data=n,
        progress=False,
    ).fit(loader, epochs=1500)  # fmt: skip
    post = vi.posterior
    assert post.names == [""] and post.meta["n_data"] == n
    sigma = post.std("").squeeze(0)
    torch.testing.assert_close(sigma, sigma_mf, rtol=0.05, atol=0)
    assert ((post.mean[""].squeeze(0) - post_mean).abs() <= 0.1 * sigma_mf).all()


# ---------------------------------------------------------------- the estimator


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _batches(n_batches: int = 3, bs: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    return [(torch.randn(bs, 4, generator=gen), torch.randint(0, 3, (bs,), generator=gen)) for _ in range(n_batches)]


def test_fit_trains_only_mu_rho_and_biases_and_keeps_the_model_as_it_was():
    model = _net()
    model.train()
    bn_before = {k: v.clone() for k, v in model[1].state_dict().items()}
    vi = MeanFieldVI(model, prior_std=0.5, init_std=1e-3, lr=1e-2, progress=False)
    assert vi.model is model and isinstance(model[0], BayesLinear)
    mu0, bias0, rho0 = model[3].mu.detach().clone(), model[3].bias.detach().clone(), model[3].rho.detach().clone()
    vi.fit(_batches(), epochs=2)
    for k, v in model[1].state_dict().items():  # BatchNorm: parameters frozen, running statistics untouched
        assert torch.equal(v, bn_before[k]), k
    assert all(p.requires_grad for p in model[1].parameters()) and model.training  # restored
    assert not torch.equal(model[3].mu, mu0) and not torch.equal(model[3].bias, bias0)
    assert not torch.equal(model[3].rho, rho0)
    assert vi.posterior.meta["epochs"] == 2 and vi.posterior.meta["n_data"] == 48


def test_fit_is_seeded_and_restores_the_global_rng():
    def run() -> torch.Tensor:
        vi = MeanFieldVI(_net(), prior_std=0.5, lr=1e-2, seed=3, progress=False).fit(_batches(), epochs=1)
        return vi.layers["3"].mu.detach()

    torch.manual_seed(123)
    a = run()
    after = torch.rand(1)
    torch.manual_seed(123)
    b = run()
    assert torch.equal(a, b) and torch.equal(torch.rand(1), after)


def test_epoch_callback_sees_each_epoch_and_leaves_training_unchanged():
    seen = []

    def cb(epoch: int) -> None:
        seen.append((epoch, vi.posterior.var["3"].clone()))
        torch.rand(100)  # the callback's own random numbers must not shift the training stream

    vi = MeanFieldVI(_net(), prior_std=0.5, lr=1e-2, seed=3, progress=False)
    vi.fit(_batches(), epochs=3, on_epoch_end=cb)
    plain = MeanFieldVI(_net(), prior_std=0.5, lr=1e-2, seed=3, progress=False).fit(_batches(), epochs=3)
    assert [e for e, _ in seen] == [0, 1, 2] and not torch.equal(seen[0][1], seen[2][1])
    assert torch.equal(vi.layers["3"].mu, plain.layers["3"].mu)


def test_n_data_defaults_to_the_examples_of_one_pass():
    data = TensorDataset(torch.randn(50, 4), torch.randint(0, 3, (50,)))
    vi = MeanFieldVI(_net(), progress=False).fit(DataLoader(data, batch_size=16, shuffle=True), epochs=1)
    assert vi.posterior.meta["n_data"] == 50
    vi = MeanFieldVI(_net(), progress=False).fit(DataLoader(data, batch_size=16, drop_last=True), epochs=1)
    assert vi.posterior.meta["n_data"] == 48
    vi = MeanFieldVI(_net(), n_data=1000, progress=False).fit(_batches(), epochs=1)
    assert vi.posterior.meta["n_data"] == 1000


def test_predict_averages_probabilities_over_samples():
    vi = MeanFieldVI(_net(), init_std=0.3, progress=False).fit(_batches(1), epochs=1)
    x = torch.randn(5, 4)
    probs = vi.predict(x, samples=8)
    assert probs.shape == (5, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    assert not torch.equal(probs, vi.predict(x, samples=8))  # stochastic: the layers sample in eval mode


def test_loaded_model_uses_its_module_family_and_key():
    loaded = LoadedModel(key="tiny-net", module=_net(), task=Task.IMAGE, family=FAMILIES["small-net"])
    vi = MeanFieldVI(loaded, progress=False).fit(_batches(1), epochs=1)
    assert vi.model is loaded.module and isinstance(loaded.module[0], BayesLinear)
    meta = vi.posterior.meta
    assert meta["model"] == "tiny-net" and meta["method"] == "vi" and meta["likelihood"] == "classification"
    assert set(meta) >= {"prior_std", "init_std", "epochs", "n_data", "seconds"}


# ---------------------------------------------------------------- bad input


def test_bad_models_and_hyper_parameters_raise_user_errors():
    with pytest.raises(UserError, match="no quantizable layers"):
        MeanFieldVI(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)))
    bad = _net()
    with torch.no_grad():
        bad[3].weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        MeanFieldVI(bad)
    assert isinstance(bad[3], nn.Linear)  # nothing converted when the input is rejected
    for kwargs in ({"prior_std": 0}, {"init_std": -1e-3}, {"lr": float("nan")}, {"kl_anneal": 2}, {"n_data": 0}):
        with pytest.raises(UserError, match=next(iter(kwargs))):
            MeanFieldVI(_net(), **kwargs)
    with pytest.raises(UserError, match="likelihood='poisson'"):
        MeanFieldVI(_net(), "poisson")
    with pytest.raises(UserError, match="family='nope'"):
        MeanFieldVI(_net(), family="nope")


def test_bad_loaders_and_use_before_fit():
    vi = MeanFieldVI(_net(), progress=False)
    with pytest.raises(NotFittedError):
        vi.posterior  # noqa: B018
    with pytest.raises(NotFittedError):
        vi.predict(torch.randn(2, 4))
    with pytest.raises(UserError, match="no batches"):
        vi.fit([])
    with pytest.raises(UserError, match="no batches"):
        vi.fit(DataLoader(TensorDataset(torch.randn(0, 4), torch.zeros(0, dtype=torch.long)), batch_size=4))
    with pytest.raises(UserError, match="one-shot iterator"):
        vi.fit(iter(_batches()))
    with pytest.raises(UserError, match="epochs"):
        vi.fit(_batches(), epochs=0)


# ---------------------------------------------------------------- posterior files


def test_posterior_round_trip_and_bayesian_from_posterior(tmp_path):
    deterministic_copy = _net()
    vi = MeanFieldVI(_net(), prior_std=0.5, init_std=1e-2, lr=1e-2, progress=False).fit(_batches(), epochs=2)
    post = vi.posterior
    assert post.names == ["0", "3"]
    loaded = Posterior.load(post.save(tmp_path / "net.vi.safetensors"))
    assert loaded.names == post.names and loaded.meta == post.meta
    for name in post.names:
        assert torch.equal(loaded.mean[name], post.mean[name]) and torch.equal(loaded.var[name], post.var[name])

    bnn = bayesian_from_posterior(deterministic_copy, loaded)
    assert bnn is deterministic_copy and isinstance(bnn[3], BayesLinear) and bnn[3].prior_std == 0.5
    for name, layer in vi.layers.items():
        new = bnn.get_submodule(name)
        assert torch.equal(new.mu, layer.mu)
        torch.testing.assert_close(new.sigma, layer.sigma, rtol=1e-5, atol=0)
    assert torch.equal(bnn[0].bias, _net()[0].bias)  # biases stay as the deterministic model's (not in a Posterior)
    with pytest.raises(UserError, match="does not match"):
        bayesian_from_posterior(nn.Sequential(nn.Linear(4, 3)), loaded)

    # a single-layer model: the returned module is the replacement of the root
    single = bayesian_from_posterior(nn.Linear(4, 8), Posterior({"": post.mean["0"]}, {"": post.var["0"]}))
    assert isinstance(single, BayesLinear) and torch.equal(single.mu, post.mean["0"])


def test_bayesian_from_posterior_on_a_conv_net_samples_like_the_posterior():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    mean = {n: m.weight.detach().clone() for n, m in FAMILIES["small-net"].quantizable_modules(net).items()}
    var = {n: torch.full_like(m, 0.04) for n, m in mean.items()}
    bnn = bayesian_from_posterior(net, Posterior(mean, var, {"prior_std": 0.2}))
    assert isinstance(bnn[0], BayesConv2d) and bnn[0].prior_std == 0.2
    torch.testing.assert_close(bnn[0].sigma, torch.full_like(mean["0"], 0.2))
    x = torch.randn(3, 1, 4, 4)
    with torch.no_grad():
        draws = torch.stack([bnn(x) for _ in range(4)])
        with deterministic(bnn):
            det = bnn(x)
    assert draws.std(0).min() > 0 and F.mse_loss(draws.mean(0), det) < 1.0
