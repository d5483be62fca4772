"""Calibration-only distillation to the posterior-predictive teacher (`bayesquant.solvers.distill`)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bayesquant.errors import UserError
from bayesquant.nn.layers import QuantLinear, quantize_module_inplace
from bayesquant.posterior.base import Posterior
from bayesquant.solvers.distill import DistillSettings, distill, posterior_teacher, tunable_parameters
from bayesquant.solvers.rtn import rtn_quantize


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 4))


def _batches(n: int = 3) -> list:
    g = torch.Generator().manual_seed(1)
    return [((torch.randn(32, 6, generator=g),), {}) for _ in range(n)]


def _quantize(net: nn.Sequential, bits: int = 2) -> nn.Sequential:
    for name in ("0", "3"):
        quantize_module_inplace(net, name, rtn_quantize(net.get_submodule(name).weight.detach(), bits))
    return net


def _posterior(net: nn.Sequential, std: float) -> Posterior:
    mean = {n: net.get_submodule(n).weight.detach().clone() for n in ("0", "3")}
    return Posterior(mean, {n: torch.full_like(m, std**2) for n, m in mean.items()}, meta={"method": "test"})


def _modules(net):
    return {n: net.get_submodule(n) for n in ("0", "3")}


def test_teacher_without_draws_is_the_float_models_softmax_and_draws_average_over_the_posterior():
    net, batches = _net(), _batches()
    float_teacher = posterior_teacher(net, batches, samples=0, progress=False)
    expected = torch.softmax(net(batches[0][0][0]), -1)
    torch.testing.assert_close(float_teacher.probs[0], expected)
    narrow = posterior_teacher(net, batches, _posterior(net, 1e-6), _modules(net), samples=4, progress=False)
    torch.testing.assert_close(narrow.probs[0], expected, atol=1e-5, rtol=0)
    wide = posterior_teacher(net, batches, _posterior(net, 1.0), _modules(net), samples=4, progress=False)
    assert (wide.probs[0] - expected).abs().max() > 0.05  # the draws change the prediction
    torch.testing.assert_close(wide.probs[0].sum(-1), torch.ones(32))
    # the weights are restored after the draws
    torch.testing.assert_close(torch.softmax(net(batches[0][0][0]), -1), expected)


def test_linearized_teacher_equals_the_sampled_one_for_a_model_linear_in_its_weights():
    net = nn.Sequential(nn.Linear(6, 4))
    mods, batches = {"0": net[0]}, _batches(2)
    post = Posterior({"0": net[0].weight.detach().clone()}, {"0": torch.rand(4, 6)}, meta={"method": "test"})
    lin = posterior_teacher(net, batches, post, mods, samples=3, predictive="linearized", progress=False)
    smp = posterior_teacher(net, batches, post, mods, samples=3, predictive="sampled", progress=False)
    for a, b in zip(lin.probs, smp.probs, strict=True):
        torch.testing.assert_close(a, b)
    cold = posterior_teacher(net, batches, post, mods, samples=3, temperature=0.0, progress=False)
    torch.testing.assert_close(cold.probs[1], torch.softmax(net(batches[1][0][0]), -1))
    hot = posterior_teacher(net, batches, post, mods, samples=3, temperature=4.0, progress=False)
    assert not torch.allclose(hot.probs[0], lin.probs[0])


def test_teacher_of_a_sequence_model_keeps_the_top_k_tokens_renormalised():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(50, 8), nn.Linear(8, 50)

        def forward(self, input_ids, use_cache=False):
            return self.out(self.emb(input_ids))

    model = Seq()
    batches = [((), {"input_ids": torch.randint(0, 50, (2, 5)), "use_cache": False})]
    teacher = posterior_teacher(model, batches, samples=0, top_k=7, progress=False)
    assert teacher.sparse and teacher.probs[0].shape == (2, 5, 7) == teacher.indices[0].shape
    torch.testing.assert_close(teacher.probs[0].sum(-1), torch.ones(2, 5))
    full = torch.softmax(model(batches[0][1]["input_ids"]), -1)
    assert torch.equal(teacher.indices[0], full.topk(7, -1).indices)
    report = distill(model, batches, teacher, DistillSettings(steps=20, lr=1e-2), progress=False)
    assert report.loss_last < report.loss_first


def test_distillation_lowers_the_kl_and_changes_only_float_tensors():
    net, batches = _net(), _batches()
    teacher = posterior_teacher(net, batches, samples=0, progress=False)
    q = _quantize(net)
    codes = {n: b.clone() for n, b in q.named_buffers() if "qweight" in n}
    report = distill(q, batches, teacher, DistillSettings(steps=60, lr=1e-2), progress=False)
    assert report.loss_last < 0.5 * report.loss_first  # 2-bit RTN leaves a large gap for the float tensors
    assert report.params == 16 + 16 + 16 + 4 + 16 + 4  # biases, LayerNorm weight, one scale per row of each layer
    for n, b in q.named_buffers():
        if "qweight" in n:
            assert torch.equal(b, codes[n])  # the codes stay as quantized
        if n.split(".")[-1].startswith("scale"):
            assert b.dtype == torch.float16 and not b.requires_grad  # grids back in their storage type
    assert all(p.requires_grad for p in q.parameters())  # the flags as they were
    x = batches[0][0][0]
    reloaded = _quantize(_net())
    reloaded.load_state_dict(q.state_dict())  # what is saved: the float16 grids as tuned
    torch.testing.assert_close(reloaded(x), q(x))


def test_a_distillation_that_raises_the_loss_is_undone():
    net, batches = _net(), _batches()
    teacher = posterior_teacher(net, batches, samples=0, progress=False)
    q = _quantize(net)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    report = distill(q, batches, teacher, DistillSettings(steps=5, lr=50.0), progress=False)  # absurd steps
    assert not report.kept and report.loss_last > report.loss_first
    after = q.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())


def test_bias_and_norm_only_leaves_the_grids_alone():
    net, batches = _net(), _batches()
    teacher = posterior_teacher(net, batches, samples=0, progress=False)
    q = _quantize(net)
    scales = {n: b.clone() for n, b in q.named_buffers() if "scale" in n}
    distill(q, batches, teacher, DistillSettings(steps=10, lr=1e-2, params="bias_norm"), progress=False)
    assert all(torch.equal(b, scales[n]) for n, b in q.named_buffers() if "scale" in n)
    assert set(tunable_parameters(q, "bias_norm")) == {"0.bias", "1.weight", "1.bias", "3.bias"}


def test_distillation_errors():
    with pytest.raises(UserError, match=r"--distill-lr -1.0: must be a positive number"):
        DistillSettings(lr=-1.0)
    with pytest.raises(UserError, match=r"--distill-params 'all'.*bias_norm, bias_norm_grid"):
        DistillSettings(params="all")
    with pytest.raises(UserError, match="no calibration batches"):
        posterior_teacher(_net(), [], samples=0)
    q = nn.Sequential(nn.Linear(3, 2, bias=False))
    quantize_module_inplace(q, "0", rtn_quantize(q[0].weight.detach(), 2))
    batch = [((torch.randn(4, 3),), {})]
    teacher = posterior_teacher(q, batch, samples=0, progress=False)
    with pytest.raises(UserError, match="no biases, norms or grids"):
        distill(q, batch, teacher, DistillSettings(params="bias_norm"), progress=False)
    assert isinstance(q[0], QuantLinear) and q[0].scale_0.dtype == torch.float16
    from bayesquant.config import QuantizeConfig

    with pytest.raises(UserError, match="--distill-samples -1"):
        QuantizeConfig(method="bayesq", bits=3, distill_steps=10, distill_samples=-1)
    with pytest.raises(UserError, match="--distill-predictive 'mc'"):
        QuantizeConfig(method="bayesq", bits=3, distill_predictive="mc")
    with pytest.raises(UserError, match=r"--distill-temperature -1.0: must be ≥ 0"):
        QuantizeConfig(method="bayesq", bits=3, distill_temperature=-1.0)
    with pytest.raises(UserError, match="--distill-steps -5"):
        QuantizeConfig(method="gptq", bits=3, distill_steps=-5)


@pytest.mark.integration
def test_bayesq_with_distillation_on_digit_cnn(tmp_path):
    from bayesquant.api import quantize
    from bayesquant.config import QuantizeConfig
    from bayesquant.eval import evaluate
    from bayesquant.io import load_quantized

    cfg = QuantizeConfig(method="bayesq", bits=3.0, budget="storable", nsamples=128, posterior_nsamples=128,
                         distill_steps=20, distill_samples=2, distill_temperature=0.1)  # fmt: skip
    result = quantize("digit-cnn", cfg)
    meta = result.log.distill
    assert meta["teacher_samples"] == 2 and meta["steps"] == 20
    assert meta["loss_after"] < meta["loss_before"]
    out = result.save(tmp_path / "bq")
    assert json.loads((out / "config.json").read_text())["extra"]["distill"]["steps"] == 20
    loaded = load_quantized(out)
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded.module(x), result.model.module(x))
    assert evaluate(loaded, "mnist:test", max_examples=300)["accuracy"] > 0.97
