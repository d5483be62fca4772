"""Plans: allocate from a posterior, write the plan, apply it with `quantize --plan`; codebook RTN."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from bayesquant.allocation import Budget, allocate
from bayesquant.allocation.costs import posterior_cost_table, quantization_error
from bayesquant.allocation.plan import Plan
from bayesquant.errors import UserError
from bayesquant.posterior import Posterior
from bayesquant.solvers.rtn import codebook_rtn
from tests.test_cli import assert_one_line_error, run


def _posterior(seed: int = 0) -> Posterior:
    gen = torch.Generator().manual_seed(seed)
    mean = {"a": torch.randn(8, 16, generator=gen), "b": 0.1 * torch.randn(4, 8, generator=gen)}
    var = {k: 0.01 + 0.1 * torch.rand(v.shape, generator=gen) for k, v in mean.items()}
    return Posterior(mean, var, {"model": "toy"})


@pytest.mark.parametrize("granularity,groups", [("layer", 2), ("channel", 12), ("column", 24), ("block", 40)])
def test_cost_table_shapes_and_closed_form(granularity, groups):
    post = _posterior()
    table = posterior_cost_table(post, granularity=granularity, group_size=4, bits=(2, 4))
    assert table.cost.shape == (groups, 2) and float(table.sizes.sum()) == 8 * 16 + 4 * 8
    assert bool((table.cost[:, 0] >= table.cost[:, 1]).all())  # more bits, less expected distortion
    if granularity == "layer":  # Σ (1 + e²/σ²) by hand for module "a" at 2 bits, grids per block of 4
        e = quantization_error(post.mean["a"], 2, "uniform", 4).double()
        expected = (1 + e**2 / post.var["a"].double()).sum()
        assert float(table.cost[0, 0]) == pytest.approx(float(expected), rel=1e-9)


def test_expected_loss_weights_errors_by_the_data_curvature_not_the_prior():
    post = _posterior(2)
    lam = 5.0
    post.meta["prior_precision"] = lam
    post.var["a"] = 1 / (lam + torch.rand(8, 16, generator=torch.Generator().manual_seed(3)))  # h ∈ [0, 1)
    h = post.loss_curvature("a").double()
    torch.testing.assert_close(h, (post.var["a"].double().reciprocal() - lam).clamp_min(1e-6 * lam))
    table = posterior_cost_table(post, metric="expected_loss", bits=(2, 3))
    e = quantization_error(post.mean["a"], 2, "uniform", None).double()
    expected = (h * (post.var["a"].double() + e**2)).sum()  # Σ h (σ² + e²)
    assert float(table.cost[0, 0]) == pytest.approx(float(expected), rel=1e-6)
    # the prior adds λ·Σe² to the precision-weighted table but nothing to the expected loss
    mse = posterior_cost_table(post, metric="expected_mse", bits=(2, 3))
    prior_part = lam * (e**2).sum() + 8 * 16
    assert float(mse.cost[0, 0]) == pytest.approx(float(prior_part + (h * e**2).sum()), rel=1e-4)
    del post.meta["prior_precision"]  # no prior precision recorded (e.g. VI): the whole precision
    torch.testing.assert_close(post.loss_curvature("a"), post.precision("a"))


def test_informativeness_metric_is_paper_c_eq7():
    post = _posterior(1)
    table = posterior_cost_table(post, metric="informativeness", bits=(3,))
    mu, var = post.mean["b"].double(), post.var["b"].double()
    info = mu.abs() / var.sqrt()
    e = quantization_error(post.mean["b"], 3, "uniform", None).double()
    tau = ((info / info.sum()) * e**2 / var).sum()
    assert float(table.cost[1, 0]) == pytest.approx(float(tau), rel=1e-9)
    assert float(table.info["mean"][1]) == pytest.approx(float(info.mean()), rel=1e-9)  # eq. 2
    p = info / info.sum()
    h = -(p * p.log()).sum()
    assert float(table.info["entropy"][1]) == pytest.approx(float(1 - h / math.log(32)), rel=1e-9)


def test_plan_round_trip_and_bad_files(tmp_path):
    alloc = allocate(posterior_cost_table(_posterior()), Budget(4.0), "knapsack")
    plan = Plan.from_allocation(alloc)
    back = Plan.load(plan.save(tmp_path / "p.json"))
    assert back.modules == plan.modules and back.meta["allocator"] == "knapsack"
    assert back.layer_bits("a") in (2, 3, 4, 5, 6, 8)
    with pytest.raises(UserError, match="not in the plan"):
        back.layer_bits("c")
    (tmp_path / "bad.json").write_text('{"format": "bayesquant-plan", "modules": {"a": [9]}}')
    with pytest.raises(UserError, match=r"widths in 1\.\.8"):
        Plan.load(tmp_path / "bad.json")
    (tmp_path / "x.json").write_text("[1, 2")
    with pytest.raises(UserError, match="not valid JSON"):
        Plan.load(tmp_path / "x.json")
    col = Plan.from_allocation(allocate(posterior_cost_table(_posterior(), granularity="column"), 4.0, "knapsack"))
    with pytest.raises(UserError, match="one width per module"):
        col.layer_bits("a")


@pytest.mark.parametrize("quantizer", ["quantile", "lloyd_max"])
def test_codebook_rtn_packs_its_own_levels(quantizer):
    torch.manual_seed(0)
    lin = nn.Linear(32, 6).requires_grad_(False)
    qw = codebook_rtn(lin.weight, 3, quantizer, group_size=16)
    w = qw.dequantize()
    assert qw.segments[0].codebook.shape == (6, 2, 8)
    for r in range(6):  # every row-group uses at most 8 distinct values, all from its codebook
        for g in range(2):
            vals = torch.unique(w[r, 16 * g : 16 * (g + 1)])
            assert len(vals) <= 8 and torch.isin(vals, qw.segments[0].codebook[r, g]).all()
    assert float((w - lin.weight).pow(2).mean()) < float(lin.weight.pow(2).mean()) * 0.1


@pytest.mark.integration
def test_allocate_then_quantize_with_the_plan(capsys, tmp_path):
    post = tmp_path / "dc.safetensors"
    code, _, _ = run(capsys, "posterior", "--model", "digit-cnn", "--calib", "mnist:train", "--nsamples", "128",
                     "--out", str(post))  # fmt: skip
    assert code == 0
    plan, png = tmp_path / "plan.json", tmp_path / "bits.png"
    code, _, _ = run(capsys, "allocate", "--posterior", str(post), "--budget", "4", "--allocator", "knapsack",
                       "--pin", "conv_layers.0=8", "--out", str(plan), "--plot", str(png))  # fmt: skip
    assert code == 0 and png.stat().st_size > 1000
    widths = json.loads(plan.read_text())["modules"]
    assert widths["conv_layers.0"] == [8] and len(widths) == 5
    js = tmp_path / "q.json"
    code, _, _ = run(capsys, "quantize", "--model", "digit-cnn", "--method", "rtn", "--plan", str(plan),
                     "--out", str(tmp_path / "q"), "--eval", "mnist:test", "--json", str(js))  # fmt: skip
    result = json.loads(js.read_text())
    assert code == 0 and result["bits"] == "plan" and 3.8 <= result["nominal_bits"] <= 4.0 + 1e-9
    assert result["accuracy"] > 0.95
    other = tmp_path / "other.json"  # a plan for another model: its module names differ
    data = json.loads(plan.read_text())
    data["modules"] = {f"features.{i}": w for i, w in enumerate(data["modules"].values())}
    other.write_text(json.dumps(data))
    code, _, err = run(capsys, "quantize", "--model", "digit-cnn", "--method", "rtn", "--plan", str(other),
                       "--out", str(tmp_path / "q2"))  # fmt: skip
    assert_one_line_error(code, err, "--plan", "does not match the model")
    code, _, err = run(capsys, "allocate", "--posterior", str(post), "--budget", "4", "--pin", "fc9=8",
                       "--out", str(plan))  # fmt: skip
    assert_one_line_error(code, err, "fc9", "no module matches")


def test_quantizer_choice_is_validated():
    from bayesquant.config import QuantizeConfig

    with pytest.raises(UserError, match="--quantizer 'kmeans'"):
        QuantizeConfig(method="rtn", quantizer="kmeans")
    with pytest.raises(UserError, match="drop --static-groups"):
        QuantizeConfig(method="gptq", quantizer="lloyd_max", group_size=64, static_groups=True)
    assert QuantizeConfig(method="gptq", quantizer="lloyd_max").quantizer == "lloyd_max"  # GPTQ with codebooks


def test_mc_task_loss_table_measures_the_loss_increase():
    from bayesquant.allocation.costs import mc_task_loss_table, nll_loss
    from bayesquant.models.family import FAMILIES
    from bayesquant.posterior.laplace import DiagLaplace

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randint(0, 3, (64,))
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    post = DiagLaplace(model, progress=False).fit(batches).posterior
    modules = FAMILIES["small-net"].quantizable_modules(model)
    loss = nll_loss(batches, "classification")
    base = loss(model)
    table = mc_task_loss_table(model, post, modules, loss, bits=(2, 4, 8))
    assert table.cost.shape == (2, 3) and table.meta["base_loss"] == pytest.approx(base)
    # by hand: layer "2" at 2 bits, everything else at μ
    q = post.mean["2"] - quantization_error(post.mean["2"], 2, "uniform", None)
    with post.weights_in(modules, {**post.mean, "2": q}):
        expected = max(loss(model) - base, 0.0)
    assert float(table.cost[1, 0]) == pytest.approx(expected)
    assert float(table.cost[:, 0].sum()) > float(table.cost[:, 2].sum())  # 2 bits hurt more than 8
    torch.testing.assert_close(modules["2"].weight, post.mean["2"])  # the model's weights are restored
    drawn = mc_task_loss_table(model, post, modules, loss, bits=(2, 8), samples=3)
    assert drawn.meta["samples"] == 3 and torch.isfinite(drawn.cost).all()


def test_a_measured_table_that_cannot_tell_widths_apart_still_spends_the_budget():
    from bayesquant.allocation.costs import _resolve_noise
    from bayesquant.allocation.table import CostTable

    # as measured on digit-cnn: the calibration loss rises a little at 2 bits and by nothing (or by noise,
    # 2e-5 at 8 bits after 0 at 4) above it
    measured = torch.tensor([[2e-3, 0.0, 0.0, 2e-5], [1e-3, 1e-4, 0.0, 0.0]], dtype=torch.float64)
    closed = torch.tensor([[9.0, 5.0, 2.0, 1.0], [4.0, 3.0, 2.5, 2.0]], dtype=torch.float64)
    cost = _resolve_noise(measured, closed)
    assert (cost[:, 1:] < cost[:, :-1]).all()  # strictly falling: every upgrade gains something
    torch.testing.assert_close(cost, torch.cummin(measured, 1).values, atol=1e-11, rtol=0)  # measurement rules
    table = CostTable(cost, torch.tensor([1000.0, 1000.0]), (2, 4, 6, 8), modules=["a", "b"])
    assert allocate(table, Budget(6.0)).nominal_bits == pytest.approx(6.0)  # spent (the raw table stops at 5)
    # the measured order decides first (b's 2 → 4 gains 9e-4, a's 4 → 6 only the tie-breaker)
    assert allocate(table, Budget(4.0)).per_module() == {"a": [4], "b": [4]}


@pytest.mark.integration
def test_allocate_with_the_task_loss_on_real_data(capsys, tmp_path):
    post = tmp_path / "dc.safetensors"
    assert run(capsys, "posterior", "--model", "digit-cnn", "--nsamples", "64", "--out", str(post))[0] == 0
    plan = tmp_path / "plan.json"
    code, _, _ = run(capsys, "allocate", "--posterior", str(post), "--budget", "3", "--metric", "mc_task_loss",
                     "--model", "digit-cnn", "--calib", "mnist:train", "--nsamples", "128",
                     "--out", str(plan))  # fmt: skip
    assert code == 0 and len(json.loads(plan.read_text())["modules"]) == 5
    code, _, err = run(capsys, "allocate", "--posterior", str(post), "--budget", "3", "--metric", "mc_task_loss",
                       "--out", str(plan))  # fmt: skip
    assert_one_line_error(code, err, "--model KEY")
