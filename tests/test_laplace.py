"""Diagonal Laplace: curvature against closed forms and brute-force per-example autograd (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesquant.errors import UserError
from bayesquant.models.family import FAMILIES
from bayesquant.posterior import NotFittedError, Posterior
from bayesquant.posterior.laplace import DiagLaplace, marglik_prior_precision


def _brute_force_sq_grads(model: nn.Module, losses) -> dict[str, torch.Tensor]:
    """Σ_n (∂ℓ_n/∂W)² by one autograd call per example (the reference the hooks must reproduce)."""
    mods = FAMILIES["small-net"].quantizable_modules(model)
    out = {n: torch.zeros_like(m.weight) for n, m in mods.items()}
    for loss in losses:
        grads = torch.autograd.grad(loss, [m.weight for m in mods.values()], retain_graph=True, allow_unused=True)
        for (n, _m), g in zip(mods.items(), grads, strict=True):
            if g is not None:
                out[n] += g**2
    return out


def test_bayesian_linear_regression_recovers_the_exact_posterior_precision():
    """Issue acceptance 1: with the exact GGN, 1/σ² = diag(XᵀX)/s² + λ, the diagonal of the posterior precision."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(200, 5, generator=gen, dtype=torch.float64) * torch.tensor([0.5, 1, 2, 3, 0.1], dtype=torch.float64)
    y = X @ torch.randn(5, 1, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(200, 1, generator=gen).double()
    model = nn.Linear(5, 1, bias=False).double()
    s, lam = 0.3, 2.0
    loader = [(X[i : i + 32], y[i : i + 32]) for i in range(0, 200, 32)]
    post = DiagLaplace(model, "regression", curvature="ggn", prior_precision=lam, sigma_noise=s).fit(loader).posterior
    exact = (X**2).sum(0) / s**2 + lam  # diag of XᵀX/s² + λI
    torch.testing.assert_close(post.precision("")[0], exact, rtol=1e-6, atol=0)  # the model itself is the Linear
    assert post.meta["n_seen"] == 200


def test_fisher_of_a_tiny_mlp_equals_per_example_autograd():
    """Issue acceptance 2: the hooked diagonal Fisher equals brute force to 1e-8."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Softplus(), nn.Linear(8, 3)).double()
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    lap = DiagLaplace(model, curvature="fisher", prior_precision=1.0).fit([(x[:25], y[:25]), (x[25:], y[25:])])
    losses = [F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]) for i in range(40)]
    ref = _brute_force_sq_grads(model, losses)
    for name, r in ref.items():
        torch.testing.assert_close(lap.curvature_[name], r, rtol=0, atol=1e-8)
        torch.testing.assert_close(lap.posterior.var[name], 1 / (r + 1.0), rtol=1e-8, atol=0)


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1, stride=2)
        self.c2 = nn.Conv2d(4, 4, 3, padding="same", groups=2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.c2(torch.tanh(self.c1(x)))).flatten(1))


def test_fisher_of_a_grouped_conv_net_equals_per_example_autograd():
    torch.manual_seed(1)
    model = _ConvNet().double()
    x, y = torch.randn(10, 2, 8, 8, dtype=torch.float64), torch.randint(0, 3, (10,))
    lap = DiagLaplace(model, curvature="fisher").fit([(x, y)])
    ref = _brute_force_sq_grads(model, [F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]) for i in range(10)])
    for name, r in ref.items():
        torch.testing.assert_close(lap.curvature_[name], r, rtol=0, atol=1e-10)


def test_ggn_for_classification_is_the_expected_fisher():
    """diag GGN = Σ_k p_k (∂ℓ(y=k)/∂w)² per example: brute force over every class."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(12, 4, dtype=torch.float64)
    lap = DiagLaplace(model, curvature="ggn").fit([(x, torch.zeros(12, dtype=torch.long))])
    mods = FAMILIES["small-net"].quantizable_modules(model)
    ref = {n: torch.zeros_like(m.weight) for n, m in mods.items()}
    for i in range(12):
        p = model(x[i : i + 1]).softmax(-1).detach()[0]
        for k in range(3):
            loss = F.cross_entropy(model(x[i : i + 1]), torch.tensor([k]))
            grads = torch.autograd.grad(loss, [m.weight for m in mods.values()])
            for n, g in zip(mods, grads, strict=True):
                ref[n] += p[k] * g**2
    for n, r in ref.items():
        torch.testing.assert_close(lap.curvature_[n], r, rtol=0, atol=1e-10)


def test_ggn_with_many_classes_is_an_unbiased_monte_carlo_estimate(monkeypatch):
    """Beyond EXACT_GGN_CLASSES the GGN draws labels from the predictive: reproducible, its total matches the exact
    sum over classes, and its error shrinks as examples are added (like 1/√n: 5× the examples, ≈ 2.2× less)."""
    import bayesquant.posterior.laplace as L

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 80)).double()
    x = torch.randn(2000, 6, dtype=torch.float64) * 2

    def fit(n: int, exact_up_to: int) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(L, "EXACT_GGN_CLASSES", exact_up_to)
        batches = [(x[i : i + 200], torch.zeros(200, dtype=torch.long)) for i in range(0, n, 200)]
        return DiagLaplace(model, curvature="ggn", progress=False).fit(batches).curvature_

    errors = {}
    for n in (400, 2000):
        exact, mc = fit(n, 100), fit(n, 64)
        assert all(torch.equal(mc[k], v) for k, v in fit(n, 64).items())
        for k in exact:
            assert float(mc[k].sum() / exact[k].sum()) == pytest.approx(1.0, abs=0.02)
        errors[n] = sum(float((mc[k] - exact[k]).abs().sum() / exact[k].sum()) for k in exact)
    assert errors[2000] < 0.6 * errors[400] and errors[2000] < 0.3  # one draw per example: ≈ 0.21 over two layers


def test_monte_carlo_ggn_follows_its_draws_and_seed(monkeypatch):
    """`mc_samples` labels per example: more draws, a smaller error against the exact sum over classes; the seed
    picks the draws (the same seed, the same curvature)."""
    import bayesquant.posterior.laplace as L

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 80)).double()
    x = torch.randn(400, 6, dtype=torch.float64) * 2
    batches = [(x[i : i + 200], torch.zeros(200, dtype=torch.long)) for i in range(0, 400, 200)]

    def fit(**kw) -> dict[str, torch.Tensor]:
        return DiagLaplace(model, curvature="ggn", progress=False, **kw).fit(batches).curvature_

    monkeypatch.setattr(L, "EXACT_GGN_CLASSES", 100)
    exact = fit()
    monkeypatch.setattr(L, "EXACT_GGN_CLASSES", 64)

    def error(c: dict[str, torch.Tensor]) -> float:
        return sum(float((c[k] - exact[k]).abs().sum() / exact[k].sum()) for k in exact)

    one = fit(mc_samples=1, seed=3)
    assert all(torch.equal(one[k], v) for k, v in fit(mc_samples=1, seed=3).items())
    assert not all(torch.equal(one[k], v) for k, v in fit(mc_samples=1, seed=4).items())
    assert error(fit(mc_samples=16, seed=3)) < 0.5 * error(one)
    lap = DiagLaplace(model, curvature="ggn", progress=False, mc_samples=2).fit(batches)
    assert lap.posterior.meta["ggn_mc_samples"] == 2
    monkeypatch.setattr(L, "EXACT_GGN_CLASSES", 100)
    assert DiagLaplace(model, curvature="ggn", progress=False).fit(batches).posterior.meta["ggn_mc_samples"] == 0
    with pytest.raises(UserError, match="mc_samples=0"):
        DiagLaplace(model, curvature="ggn", mc_samples=0)


def test_sequence_inputs_sum_gradients_over_positions_before_squaring():
    """A Linear applied to (B, T, d): the per-example gradient sums over T, then squares (not Σ_t g_t²)."""
    torch.manual_seed(3)

    class SeqNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(5, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):  # (B, T, 5) → (B, 2)
            return self.head(torch.tanh(self.proj(x)).mean(1))

    model = SeqNet().double()
    x, y = torch.randn(6, 7, 5, dtype=torch.float64), torch.randint(0, 2, (6,))
    lap = DiagLaplace(model).fit([(x, y)])
    ref = _brute_force_sq_grads(model, [F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(lap.curvature_["proj"], ref["proj"], rtol=0, atol=1e-10)


def test_layerwise_curvature_is_the_diagonal_of_2xxT():
    torch.manual_seed(4)
    model = _ConvNet().double()
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    lap = DiagLaplace(model, curvature="layerwise").fit([(x, torch.zeros(5, dtype=torch.long))])
    cols = F.unfold(x, 3, padding=1, stride=2)  # (5, 2·9, 16): the inputs of c1
    expected = 2 * (cols**2).sum((0, 2)).reshape(1, 2, 3, 3).expand(4, 2, 3, 3)
    torch.testing.assert_close(lap.curvature_["c1"], expected, rtol=1e-12, atol=0)
    fc_in = torch.tanh(model.c2(torch.tanh(model.c1(x)))).flatten(1)
    torch.testing.assert_close(lap.curvature_["fc"], (2 * (fc_in**2).sum(0)).expand(3, 64), rtol=1e-12, atol=0)


def test_n_data_scales_the_curvature():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    batch = [(torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,)))]
    a = DiagLaplace(model).fit(batch).curvature_["0"]
    b = DiagLaplace(model, n_data=1000).fit(batch).curvature_["0"]
    torch.testing.assert_close(b, 100 * a)


def test_marglik_prior_precision_maximises_the_laplace_evidence():
    gen = torch.Generator().manual_seed(6)
    curv = {"a": torch.rand(50, generator=gen, dtype=torch.float64) * 100, "b": torch.rand(7, generator=gen).double()}
    mean = {"a": torch.randn(50, generator=gen, dtype=torch.float64), "b": torch.randn(7, generator=gen).double()}
    lam = marglik_prior_precision(curv, mean)
    P, sq = 57, sum(float(m.pow(2).sum()) for m in mean.values())

    def evidence(l: float) -> float:
        return P / 2 * math.log(l) - l / 2 * sq - 0.5 * sum(float((h + l).log().sum()) for h in curv.values())

    assert evidence(lam) > evidence(lam * 1.05) and evidence(lam) > evidence(lam / 1.05)


def test_marglik_through_fit_sets_the_prior_and_records_it():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    lap = DiagLaplace(model, prior_precision="marglik").fit([(torch.randn(30, 4).double(), torch.randint(0, 3, (30,)))])
    post = lap.posterior
    assert post.meta["prior_precision"] == pytest.approx(lap.prior_precision_) and lap.prior_precision_ > 0
    torch.testing.assert_close(post.var["0"], 1 / (lap.curvature_["0"] + lap.prior_precision_))


def test_causal_lm_fisher_is_per_sequence(tiny_llama_f64):
    """Per-sequence squared gradients of the summed token NLL, against one autograd call per sequence."""
    model = tiny_llama_f64
    ids = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(0))
    lap = DiagLaplace(model, "causal_lm", family=FAMILIES["llama"], prior_precision=1.0).fit([ids[:2], ids[2:]])
    name = "model.layers.1.mlp.down_proj"
    weight = model.get_submodule(name).weight
    weight.requires_grad_(True)
    ref = torch.zeros_like(weight)
    for i in range(3):
        logits = model(input_ids=ids[i : i + 1], use_cache=False).logits[0, :-1]
        (g,) = torch.autograd.grad(F.cross_entropy(logits, ids[i, 1:], reduction="sum"), weight)
        ref += g**2
    torch.testing.assert_close(lap.curvature_[name], ref, rtol=1e-9, atol=1e-12)
    assert "lm_head" not in lap.posterior.mean and len(lap.posterior.mean) == 14
    assert all(torch.isfinite(v).all() and (v > 0).all() for v in lap.posterior.var.values())


@pytest.fixture
def tiny_llama_f64():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)  # fmt: skip
    return LlamaForCausalLM(cfg).double().eval()


# ---------------------------------------------------------------- bad input
def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no quantizable layers"):
        DiagLaplace(nn.Sequential(nn.ReLU()))
    bad = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        DiagLaplace(bad)
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(UserError, match="no batches"):
        DiagLaplace(model).fit([])
    with pytest.raises(NotFittedError):
        DiagLaplace(model).posterior  # noqa: B018
    with pytest.raises(UserError, match="curvature='hessian'"):
        DiagLaplace(model, curvature="hessian")
    with pytest.raises(UserError, match="prior_precision"):
        DiagLaplace(model, prior_precision=-1.0)
    with pytest.raises(UserError, match="ggn"):
        DiagLaplace(model, "causal_lm", curvature="ggn")
    with pytest.raises(UserError, match="tuple"):
        DiagLaplace(model).fit([torch.randn(3, 2)])


def test_posterior_file_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    post = DiagLaplace(model).fit([(torch.randn(8, 3), torch.randint(0, 2, (8,)))]).posterior
    path = post.save(tmp_path / "p.safetensors")
    back = Posterior.load(path)
    assert back.names == post.names and back.meta["curvature"] == "fisher"
    for n in post.names:
        assert torch.equal(back.mean[n], post.mean[n]) and torch.equal(back.var[n], post.var[n])
    back.check_model(FAMILIES["small-net"].quantizable_modules(model))
    other = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(UserError, match="weight shape"):
        back.check_model(FAMILIES["small-net"].quantizable_modules(other))
    with pytest.raises(UserError, match="does not match"):
        back.check_model(FAMILIES["small-net"].quantizable_modules(nn.Sequential(nn.Linear(3, 2))))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        Posterior.load(tmp_path / "cut.safetensors")
    with pytest.raises(UserError, match="no such file"):
        Posterior.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="finite and positive"):
        Posterior({"a": torch.zeros(2)}, {"a": torch.tensor([1.0, 0.0])})


def test_per_example_gradients_taken_in_chunks_give_the_same_curvature(monkeypatch):
    """Chunking the examples (to bound the memory of a convolution's unfolded patches) changes no number."""
    import bayesquant.posterior.curvature as C

    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    ).double()  # fmt: skip
    batch = (torch.randn(7, 2, 5, 5, dtype=torch.float64), torch.randint(0, 3, (7,)))
    whole = DiagLaplace(model, curvature="ggn", progress=False).fit([batch]).curvature_
    monkeypatch.setattr(C, "CHUNK_ELEMENTS", 1)  # one example at a time
    chunked = DiagLaplace(model, curvature="ggn", progress=False).fit([batch]).curvature_
    for n in whole:
        torch.testing.assert_close(chunked[n], whole[n], rtol=1e-12, atol=0)
