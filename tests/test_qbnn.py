"""QBNN: VPQ / SPQ / JQ quantizers with straight-through gradients, training, uncertainty metrics, packed format."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn

from bayesquant.bnn.qbnn import (
    QBNN,
    NetConfig,
    QBayesLinear,
    QuantConfig,
    build_net,
    fake_quant_log,
    fake_quant_uniform,
    plot_uncertainty,
    predict_samples,
    pretrain,
    train_qbnn,
    uncertainty_report,
    uncertainty_scores,
)
from bayesquant.bnn.qbnn_io import load_qbnn, save_qbnn
from bayesquant.bnn.qbnn_run import TrainConfig, markdown_table, ptq_baseline
from bayesquant.cli_qbnn import _int_list, _quant_config, _train_config, add_qbnn_parser
from bayesquant.data.images import load_idx_images
from bayesquant.errors import UserError

MLP = NetConfig("mlp", hidden=(32, 32))
LENET = NetConfig("lenet")


def _model(quant: QuantConfig, cfg: NetConfig = MLP, seed: int = 0, spread: bool = True) -> QBNN:
    """A QBNN with random μ and (if spread) σ spread over two decades, so that grids are non-trivial."""
    torch.manual_seed(seed)
    model = QBNN.from_pretrained(build_net(cfg), cfg, quant, prior_std=0.1, init_std=1e-2)
    if spread:
        for layer in model.layers().values():
            sigma = 10 ** (-3 + 2 * torch.rand(layer.mu.shape))  # log-uniform in [1e-3, 1e-1]
            layer.set_posterior(layer.mu.detach(), sigma.square())
    return model


@pytest.fixture(scope="module")
def mnist_tiny() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_idx_images("mnist", "test")
    return data.images[:600], data.labels[:600]


# ---------------------------------------------------------------- quantizers and layers


def test_ste_gradient_passes_through_vpq():
    layer = _model(QuantConfig("vpq", mu_bits=3, sigma_bits=3)).net[2]
    mu_hat, sigma_hat = layer.posterior()
    assert not torch.equal(mu_hat, layer.mu.clamp(-1, 1))  # quantized in the forward pass ...
    (mu_hat.sum() + sigma_hat.sum()).backward()
    inside = layer.mu.detach().abs() < 1  # ... identity gradient (inside the clip range)
    assert torch.equal(layer.mu.grad[inside], torch.ones_like(layer.mu.grad[inside]))
    torch.testing.assert_close(layer.rho.grad, torch.sigmoid(layer.rho.detach()))  # dσ/dρ, quantizer skipped


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_vpq_mu_and_sigma_take_at_most_2b_values(bits, granularity):
    layer = _model(QuantConfig("vpq", mu_bits=bits, sigma_bits=bits, granularity=granularity)).net[2]
    mu_hat, sigma_hat = (t.detach() for t in layer.posterior())
    rows = range(mu_hat.shape[0]) if granularity == "channel" else [slice(None)]
    for r in rows:
        assert mu_hat[r].unique().numel() <= 2**bits
        assert sigma_hat[r].unique().numel() <= 2**bits
    if granularity == "channel":
        assert mu_hat.unique().numel() > 2**bits  # one grid per row: the rows' levels differ


def test_weight_sampling_shares_one_draw_per_batch_unlike_the_local_reparameterization():
    x = torch.rand(1, 1, 28, 28).expand(6, 1, 28, 28)  # the same image six times
    for weight_sampling, same in ((True, True), (False, False)):
        model = _model(QuantConfig("float", weight_sampling=weight_sampling))
        out = model(x)
        assert torch.allclose(out, out[:1].expand_as(out)) == same
    assert QuantConfig("float", weight_sampling=True).label() == "float-ws"


def test_fixed_range_grid_is_the_papers_levels_over_minus_c_to_c():
    layer = _model(QuantConfig("vpq", mu_bits=2, sigma_bits=4, fixed_range=True, weight_clip=1.0)).net[2]
    mu_hat = layer.posterior()[0].detach()
    levels = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
    distance = (mu_hat.unique()[:, None] - levels[None, :]).abs().min(1).values
    assert (distance < 1e-6).all()  # no zero level at 2 bits: small weights become ±1/3
    assert (mu_hat.abs() > 0.3).all()


def test_log_sigma_relative_error_bound_and_uniform_contrast():
    sigma = 10 ** (-4 + 3 * torch.rand(50, 40, dtype=torch.float64))  # 1e-4 .. 1e-1
    for bits in (2, 4, 6):
        q = fake_quant_log(sigma, bits, "channel")
        lo, hi = sigma.log().aminmax(dim=1, keepdim=True)
        half_step = (hi - lo) / (2**bits - 1) / 2
        ratio = (q / sigma).log()
        assert bool((ratio.abs() <= half_step + 1e-12).all())
    # a uniform grid on σ rounds the small σ to 0 or to many times their value: unbounded relative error
    u = fake_quant_uniform(sigma, 4, "channel", symmetric=False)
    assert float(((u - sigma).abs() / sigma).max()) > 0.9
    assert float(((fake_quant_log(sigma, 4, "channel") - sigma).abs() / sigma).max()) < 0.6


def test_spq_quantizes_each_sampled_weight(monkeypatch):
    layer = _model(QuantConfig("spq", sample_bits=3)).net[2]
    seen: list[torch.Tensor] = []
    original = QBayesLinear._op

    def spy(self, x, weight, bias):
        seen.append(weight.detach().clone())
        return original(self, x, weight, bias)

    monkeypatch.setattr(QBayesLinear, "_op", spy)
    x = torch.randn(5, layer.in_features)
    layer(x)
    layer(x)
    assert len(seen) == 2  # one weight draw per pass, no local reparameterization
    assert not torch.equal(seen[0], seen[1])
    for w in seen:
        assert all(row.unique().numel() <= 8 for row in w)
    assert not torch.equal(seen[0], layer.mu.detach())


def test_ptq_baseline_is_per_tensor_symmetric(mnist_tiny):
    model = _model(QuantConfig("float"))
    ptq = ptq_baseline(model, bits=8)
    ptq.freeze()
    for layer in ptq.layers().values():
        assert layer.mu_hat.unique().numel() <= 256 and layer.sigma_hat.unique().numel() <= 256
        assert layer.quant.symmetric and layer.quant.granularity.value == "tensor"
    assert model.quant.mode.value == "float"  # the original is untouched


# ---------------------------------------------------------------- training


def test_two_stage_training_learns_and_is_seeded(mnist_tiny):
    x, y = mnist_tiny
    torch.manual_seed(0)
    net = build_net(MLP)
    pretrain(net, x, y, epochs=8, batch_size=50, seed=0, progress=False)
    quant = QuantConfig("jq", mu_bits=4, sigma_bits=4, sample_bits=4)
    models = []
    for seed in (0, 0, 1):
        m = QBNN.from_pretrained(net, MLP, quant, prior_std=0.1, init_std=1e-2)
        stats = train_qbnn(m, x, y, epochs=2, batch_size=100, seed=seed, progress=False)
        models.append(m)
    assert stats["steps"] == 12 and math.isfinite(stats["loss"])
    a, b, c = (dict(m.named_parameters()) for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed → same result
    assert not all(torch.equal(a[k], c[k]) for k in a)
    probs = predict_samples(models[0], x, samples=4).mean(0)
    assert float((probs.argmax(-1) == y).double().mean()) > 0.8  # fits its 600 training images


def test_draws_split_the_batch_into_parts_with_a_weight_draw_each_only_in_training():
    x = torch.rand(1, 1, 28, 28).expand(8, 1, 28, 28)  # the same image eight times
    model = _model(QuantConfig("jq", weight_sampling=True))
    layers = model.layers().values()
    for layer in layers:
        layer.draws = 4
    model.train()
    out = model(x)
    parts = out.view(4, 2, -1)
    assert torch.equal(parts[:, 0], parts[:, 1])  # one draw inside a part
    assert all(not torch.allclose(parts[0, 0], parts[k, 0]) for k in (1, 2, 3))  # another draw for each part
    model.eval()
    out = model(x)
    assert torch.equal(out, out[:1].expand_as(out))  # evaluation: one draw per batch, as before


def test_train_sets_draws_for_training_only_and_sigma_lr_moves_sigma_alone(mnist_tiny):
    x, y = mnist_tiny
    net = build_net(MLP)
    start = QBNN.from_pretrained(net, MLP, QuantConfig("jq"), prior_std=0.1, init_std=1e-2)
    rho0 = {k: p.detach().clone() for k, p in start.named_parameters()}
    moved = {}
    for sigma_lr in (1e-12, 1e-2):
        m = QBNN.from_pretrained(net, MLP, QuantConfig("jq"), prior_std=0.1, init_std=1e-2)
        train_qbnn(m, x, y, epochs=1, batch_size=100, draws=5, sigma_lr=sigma_lr, progress=False)
        assert all(layer.draws == 1 for layer in m.layers().values())
        params = dict(m.named_parameters())
        moved[sigma_lr] = {k: float((params[k].detach() - rho0[k]).abs().max()) for k in params}
    for k, d in moved[1e-12].items():
        if k.endswith("rho"):
            assert d < 1e-9 < moved[1e-2][k]  # ρ follows its own learning rate ...
        else:
            assert d > 1e-4  # ... and μ keeps the common one


def test_train_rejects_bad_arguments():
    model = _model(QuantConfig("vpq"))
    with pytest.raises(UserError, match="kl_anneal"):
        train_qbnn(model, torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), kl_anneal=2.0)
    with pytest.raises(UserError, match=r"mode='foo'.*valid: float, vpq, spq, jq"):
        QuantConfig("foo")
    with pytest.raises(UserError, match="mu_bits=9"):
        QuantConfig("vpq", mu_bits=9)
    with pytest.raises(UserError, match="--epochs"):
        TrainConfig(epochs=-1)
    x, y = torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
    with pytest.raises(UserError, match="sigma_lr=0"):
        train_qbnn(model, x, y, sigma_lr=0)
    with pytest.raises(UserError, match=r"draws=9.*batch size \(8\)"):
        train_qbnn(model, x, y, batch_size=8, draws=9)
    with pytest.raises(UserError, match="--sigma-lr"):
        TrainConfig(sigma_lr=-1.0)
    with pytest.raises(UserError, match="--draws 200: at most --batch-size"):
        TrainConfig(draws=200)


# ---------------------------------------------------------------- uncertainty


def _toy_probs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T=4 samples: MNIST confident and consistent, Ambiguous split 50/50 and consistent, Fashion confident but
    each sample on another class (disagreement)."""
    eye = torch.eye(10)
    mnist = eye[3].expand(4, 5, 10)
    amb = (0.5 * (eye[1] + eye[7])).expand(4, 5, 10)
    fashion = torch.stack([eye[k].expand(5, 10) for k in (0, 2, 4, 6)])
    probs = 0.98 * torch.cat([mnist, amb, fashion], dim=1) + 0.002
    labels = torch.cat([torch.full((5,), 3), torch.full((5,), 1), torch.full((5,), -1)])
    source = torch.cat([torch.full((5,), k) for k in range(3)])
    return probs, labels, source


def test_auroc_of_separable_toy_is_one():
    probs, labels, source = _toy_probs()
    r = uncertainty_report(probs, labels, source)
    assert r["auroc_aleatoric"] == 1.0 and r["auroc_epistemic"] == 1.0
    assert r["accuracy"] == 1.0 and r["samples"] == 4
    assert r["mi_mnist"] == pytest.approx(0, abs=1e-9) and r["mi_ambiguous"] == pytest.approx(0, abs=1e-9)
    s = uncertainty_scores(probs)
    torch.testing.assert_close(s["entropy"], s["aleatoric"] + s["mi"])  # H[p̄] = E[H] + MI
    # swapping the roles gives the opposite ranking
    flipped = uncertainty_report(probs, labels, torch.tensor([1] * 5 + [0] * 5 + [2] * 5))
    assert flipped["auroc_aleatoric"] == 0.0


def test_scatter_plot_png(tmp_path):
    probs, _, source = _toy_probs()
    path = plot_uncertainty(probs, source, tmp_path / "scatter.png", title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- packed format


@pytest.mark.parametrize(
    "quant, cfg",
    [
        (QuantConfig("jq", 4, 4, 4), MLP),
        (QuantConfig("vpq", 3, 5, sigma_quantizer="uniform"), MLP),
        (QuantConfig("spq", sample_bits=4), MLP),
        (QuantConfig("jq", 2, 3, 4, granularity="tensor", symmetric=True), LENET),
        (QuantConfig("jq", 3, 4, 3, fixed_range=True), MLP),
    ],
    ids=["jq", "vpq-uniform-sigma", "spq", "lenet-jq-tensor", "jq-fixed-range"],
)
def test_packed_save_load_gives_identical_predictions(tmp_path, quant, cfg):
    model = _model(quant, cfg)
    x = torch.rand(20, 1, 28, 28)
    save_qbnn(model, tmp_path / "m")  # freezes the model to the stored codes
    before = predict_samples(model, x, samples=3, seed=7)
    loaded, config = load_qbnn(tmp_path / "m")
    assert loaded.quant == quant and config["net"]["arch"] == cfg.arch.value
    after = predict_samples(loaded, x, samples=3, seed=7)
    assert torch.equal(before, after)
    assert not torch.equal(after[0], after[1])  # still a Bayesian net: the samples differ
    for name, layer in loaded.layers().items():
        if quant.mode.vpq:
            assert layer.mu_hat.unique().numel() <= 2**quant.mu_bits * (1 if quant.granularity.value == "tensor" else
                                                                         layer.mu.shape[0])  # fmt: skip
        torch.testing.assert_close(layer.sigma, layer.sigma_hat, rtol=1e-5, atol=1e-30, msg=name)


def test_size_reduction_is_measured_from_written_bytes(tmp_path):
    sizes = {}
    for bits in (4, 2):
        model = _model(QuantConfig("jq", bits, bits, bits), NetConfig("mlp"))
        sizes[bits] = save_qbnn(model, tmp_path / f"jq{bits}")
        assert sizes[bits]["packed_bytes"] == (tmp_path / f"jq{bits}" / "qbnn.safetensors").stat().st_size
    float_size = save_qbnn(_model(QuantConfig("float"), NetConfig("mlp")), tmp_path / "float")
    assert sizes[4]["float32_bytes"] == float_size["packed_bytes"]  # the reference is a real float32 file
    assert float_size["size_reduction"] == 1.0
    n = sizes[4]["n_weights"]
    assert n == 784 * 100 + 100 * 100 + 100 * 10
    assert sizes[4]["size_reduction"] >= 7.5  # the 4-bit JQ target (2 × 4-bit codes vs 2 × float32)
    assert sizes[4]["size_reduction"] < 8.0  # grids and the header are counted
    assert 2 * n * 4 / 8 < sizes[4]["tensor_bytes"] < 2 * n * 4 / 8 * 1.05
    assert sizes[2]["size_reduction"] > 1.9 * sizes[4]["size_reduction"]
    with pytest.raises(UserError, match="already exists"):
        save_qbnn(_model(QuantConfig("jq")), tmp_path / "jq4")


# ---------------------------------------------------------------- command line and tables


def test_cli_parser_and_errors():
    parser = argparse.ArgumentParser()
    add_qbnn_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["qbnn", "train", "--mode", "vpq", "--bits", "3", "--sigma-bits", "5"])
    quant = _quant_config(args)
    assert (quant.mode.value, quant.mu_bits, quant.sigma_bits, quant.sample_bits) == ("vpq", 3, 5, 3)
    with pytest.raises(UserError, match="--bits-list '8,x'"):
        _int_list("8,x", "--bits-list", 1, 8)
    with pytest.raises(UserError, match=r"\[9\] outside 1..8"):
        _int_list("9,4", "--bits-list", 1, 8)
    with pytest.raises(UserError, match="--sample-bits 0"):
        _quant_config(parser.parse_args(["qbnn", "train", "--sample-bits", "0"]))
    tc = _train_config(parser.parse_args(["qbnn", "train", "--sigma-lr", "0.01", "--draws", "4"]))
    assert (tc.sigma_lr, tc.draws) == (0.01, 4)
    assert _train_config(parser.parse_args(["qbnn", "train"])) == TrainConfig()  # one set of defaults
    assert (TrainConfig().prior_std, TrainConfig().sigma_lr) == (0.2, 1e-2)  # the recipe of docs/results.md


def test_markdown_table_pools_seeds():
    row = {"arch": "mlp", "activation": "softplus", "config": "jq-4/4/4", "accuracy": 0.9, "size_reduction": 7.7}
    table = markdown_table([row, row | {"accuracy": 0.8}])
    assert "| mlp | softplus | jq-4/4/4 | 2 | 0.8500 ± 0.0707 |" in table


def test_build_net_shapes():
    for cfg in (MLP, LENET, NetConfig("lenet", "relu", bias=True)):
        net = build_net(cfg)
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
        assert all(isinstance(m, nn.Softplus if cfg.activation.value == "softplus" else nn.ReLU)
                   for m in net if isinstance(m, nn.Softplus | nn.ReLU))  # fmt: skip


def test_labels_and_file_names():
    q = QuantConfig("jq", 4, 3, 2)
    assert q.label() == "jq-4/3/2" and q.slug() == "jq-4_3_2"
    assert QuantConfig("spq", sample_bits=5).label() == "spq-5" and QuantConfig("float").label() == "float"
    assert QuantConfig.from_dict(q.to_dict()) == q
