"""GPTQ, RTN, the Hessian accumulator and the layer-by-layer driver on tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesquant.models import FAMILIES, nets
from bayesquant.solvers import gptq_quantize, quantize_sequential, rtn_quantize
from bayesquant.solvers.hessian import HessianAccumulator, layer_inputs


def _layer_problem(rows=24, columns=64, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, columns, generator=g, dtype=torch.float64).float()
    # correlated inputs, as real activations are: that is where error feedback pays
    X = (torch.randn(n, columns, generator=g) @ torch.randn(columns, columns, generator=g) * 0.3).float()
    H = 2 * X.T @ X / n
    return W, X, H


def _output_error(W, Q, X):
    return float(((X @ W.T - X @ Q.T) ** 2).mean())


@pytest.mark.parametrize("bits, group_size", [(4, None), (3, 16), (2, 32)])
def test_gptq_beats_rtn_on_the_layer_output(bits, group_size):
    W, X, H = _layer_problem()
    rtn = rtn_quantize(W, bits, group_size=group_size).dequantize()
    res = gptq_quantize(W, H, bits, group_size=group_size)
    assert torch.allclose(res.qweight.dequantize(), res.dequantized, atol=1e-6)
    assert _output_error(W, res.dequantized, X) < 0.8 * _output_error(W, rtn, X)


def test_gptq_with_identity_hessian_is_rtn():
    W, _, _ = _layer_problem()
    H = torch.eye(W.shape[1])
    for g in (None, 16):
        res = gptq_quantize(W, H, 3, group_size=g, damp=0.0)
        torch.testing.assert_close(res.dequantized, rtn_quantize(W, 3, group_size=g).dequantize())


@pytest.mark.parametrize("static_groups", [False, True])
def test_act_order_packs_into_the_format(static_groups):
    W, X, H = _layer_problem()
    res = gptq_quantize(W, H, 3, group_size=16, act_order=True, static_groups=static_groups)
    qw = res.qweight
    assert (qw.perm is None) == static_groups
    torch.testing.assert_close(qw.dequantize(), res.dequantized, atol=1e-6, rtol=0)
    seg = qw.segments[0]
    assert int(seg.codes.min()) >= 0 and int(seg.codes.max()) <= 7
    plain = gptq_quantize(W, H, 3, group_size=16)
    assert _output_error(W, res.dequantized, X) < 2 * _output_error(W, plain.dequantized, X)


def test_act_order_per_channel_stores_no_permutation():
    # one grid per row does not depend on the column order: the codes are stored in the original order
    W, _, H = _layer_problem()
    res = gptq_quantize(W, H, 3, act_order=True)
    assert res.qweight.perm is None and res.qweight.segments[0].n_groups == 1
    torch.testing.assert_close(res.qweight.dequantize(), res.dequantized, atol=0, rtol=0)
    assert not torch.equal(res.dequantized, gptq_quantize(W, H, 3).dequantized)  # act-order was applied


def test_dead_columns_are_zeroed():
    W, X, _ = _layer_problem()
    X[:, 5] = 0
    res = gptq_quantize(W, 2 * X.T @ X / len(X), 4)
    assert torch.all(res.dequantized[:, 5].abs() <= res.qweight.segments[0].scale[:, 0] / 2 + 1e-6)


def test_hessian_is_independent_of_batching_and_unfolds_convolutions():
    lin = nn.Linear(8, 3)
    X = torch.randn(10, 7, 8)
    a, b = HessianAccumulator(lin), HessianAccumulator(lin)
    a.add_batch(X)
    for chunk in X.split(3):
        b.add_batch(chunk)
    rows = X.reshape(-1, 8)
    torch.testing.assert_close(a.H, 2 * rows.T @ rows / len(rows))
    torch.testing.assert_close(a.H, b.H)

    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 9, 9)
    cols = layer_inputs(conv, x)  # (patches, 27)
    out = (cols @ conv.weight.flatten(1).T + conv.bias).reshape(2, 5, 5, 5)  # (b, oh, ow, out) order
    torch.testing.assert_close(out, conv(x).permute(0, 2, 3, 1).reshape(2, 5, 5, 5), atol=1e-5, rtol=1e-5)


def _gptq_solver(bits):
    def solve(_name, module, H):
        res = gptq_quantize(module.weight.detach().flatten(1), H, bits)
        from dataclasses import replace

        return replace(res.qweight, shape=tuple(module.weight.shape))

    return solve


def test_sequential_driver_on_a_small_net_quantizes_every_module_and_helps():
    torch.manual_seed(0)
    model = nets.LeNet5().eval()
    x = torch.rand(64, 1, 28, 28)
    ref = model(x).detach()
    fam = FAMILIES["small-net"]
    rtn_model = nets.LeNet5().eval()
    rtn_model.load_state_dict(model.state_dict())
    report = quantize_sequential(model, fam, [((x,), {})], _gptq_solver(3))
    assert set(report.qweights) == set(fam.quantizable_modules(model))
    for module in fam.quantizable_modules(rtn_model).values():
        module.weight.data = rtn_quantize(module.weight.flatten(1), 3).dequantize().reshape(module.weight.shape)
    err_gptq = F.mse_loss(model(x), ref)
    err_rtn = F.mse_loss(rtn_model(x), ref)
    assert err_gptq < err_rtn


def test_sequential_driver_walks_llama_blocks_true_sequentially():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (4, 16))
    batches = [((), {"input_ids": ids[:2], "use_cache": False}), ((), {"input_ids": ids[2:], "use_cache": False})]
    seen = []

    def solve(name, module, H):
        seen.append(name)
        assert H.shape == (module.in_features, module.in_features)
        return _gptq_solver(8)(name, module, H)

    with torch.no_grad():
        ref = model(input_ids=ids).logits
    quantize_sequential(model, FAMILIES["llama"], batches, solve)
    assert seen[:7] == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
        "model.layers.0.mlp.down_proj",
    ]  # fmt: skip
    assert len(seen) == 14
    with torch.no_grad():
        out = model(input_ids=ids).logits
    assert F.mse_loss(out, ref) < 1e-3 * ref.var()  # 8 bits barely changes a thing


def test_replaying_finished_children_changes_nothing(monkeypatch):
    """Skipping the recomputation of finished sub-modules (the attention) must give identical results."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    from bayesquant.solvers import sequential

    calls = []
    original = modeling_llama.LlamaAttention.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", counting)

    def run():
        calls.clear()
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64,
        )  # fmt: skip
        model = LlamaForCausalLM(cfg).eval()
        ids = torch.randint(0, 64, (6, 16))
        batches = [((), {"input_ids": ids[i : i + 2], "use_cache": False}) for i in range(0, 6, 2)]
        report = quantize_sequential(model, FAMILIES["llama"], batches, _gptq_solver(3))
        return {n: q.dequantize() for n, q in report.qweights.items()}, model, len(calls)

    fast, model, fast_calls = run()
    assert all("forward" not in vars(m) for m in model.modules())  # replay hooks are removed afterwards
    monkeypatch.setattr(sequential.FrozenOutputs, "update", lambda self, done: None)
    slow, _, slow_calls = run()
    assert fast_calls < slow_calls  # the attention was replayed, not recomputed
    assert fast.keys() == slow.keys()
    for name in fast:
        assert torch.equal(fast[name], slow[name]), name


def test_calibration_sees_exactly_the_weights_that_are_saved():
    """The driver writes the float16-rounded grid's dequantization into the model, which is what the packed
    module stores: later layers are calibrated on the very weights that get saved."""
    from bayesquant.models import FAMILIES
    from bayesquant.nn.layers import QuantLinear
    from bayesquant.solvers.rtn import rtn_quantize
    from bayesquant.solvers.sequential import quantize_sequential

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))

    def solve(_name, module, _H):
        return rtn_quantize(module.weight.detach(), 3, group_size=8)

    report = quantize_sequential(model, FAMILIES["small-net"], [], solve, needs_hessian=False)
    for name, qw in report.qweights.items():
        packed = QuantLinear.from_float(model.get_submodule(name), qw)
        assert torch.equal(packed.dequantized_weight(torch.float32), model.get_submodule(name).weight.detach())


def test_replay_survives_in_place_ops_downstream(monkeypatch):
    """Finished convs followed by in-place ops: replayed outputs must not have been modified in place."""
    from bayesquant.models.family import Family
    from bayesquant.solvers import sequential

    class Shift(nn.Module):  # an in-place op that, unlike ReLU, changes its input each time it is applied
        def forward(self, x):
            return x.add_(1.0)

    def block(cin: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, 4, 3, padding=1), Shift(), nn.Conv2d(4, 4, 3, padding=1))

    def run():
        torch.manual_seed(0)

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = nn.Sequential(block(3), block(4))  # two blocks; each replays its first conv later

            def forward(self, x):
                return self.net(x)

        model = Net()
        x = torch.randn(8, 3, 6, 6)
        batches = [((x[:4],), {}), ((x[4:],), {})]
        report = quantize_sequential(model, Family("t", blocks="net"), batches, _gptq_solver(3))
        return {n: q.dequantize() for n, q in report.qweights.items()}

    fast = run()
    monkeypatch.setattr(sequential.FrozenOutputs, "update", lambda self, done: None)
    slow = run()
    assert fast.keys() == slow.keys() and len(fast) == 4
    for name in fast:
        assert torch.equal(fast[name], slow[name]), name
