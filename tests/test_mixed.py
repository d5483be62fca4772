"""Mixed-width GPTQ (one width per input column), BAQ's equal-loss allocation, and the bayesq/baq methods."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from bayesquant.allocation.table import Budget
from bayesquant.solvers.gptq import column_groups, gptq_quantize, gptq_quantize_mixed
from bayesquant.solvers.mixed import baq_quantize, equal_loss_widths, mixed_stored_bits


def _problem(rows=32, columns=96, n=1024, seed=0, spread=1.0):
    """A layer whose input features differ in scale (as LLM activations do), so columns differ in importance."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(spread * torch.randn(columns, generator=g))
    X = torch.randn(n, columns, generator=g) @ (torch.eye(columns) + 0.1 * torch.randn(columns, columns, generator=g))
    X = X * scale
    W = torch.randn(rows, columns, generator=g)
    return W, X, 2 * X.T @ X / n


def _output_error(W, Q, X):
    return float(((X @ (W - Q).T) ** 2).mean())


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [None, 32])
def test_one_width_reproduces_gptq(act_order, group_size):
    W, _, H = _problem()
    ref = gptq_quantize(W, H, 3, group_size=group_size, act_order=act_order, block_size=32)
    mixed = gptq_quantize_mixed(W, H, torch.full((96,), 3), group_size=group_size, act_order=act_order, block_size=32)
    torch.testing.assert_close(mixed.dequantized, ref.dequantized, rtol=0, atol=0)
    torch.testing.assert_close(mixed.qweight.dequantize(), ref.qweight.dequantize(), rtol=0, atol=0)


def test_mixed_widths_pack_widest_first_and_dequantize_to_the_solution():
    W, _, H = _problem()
    widths = torch.tensor([2, 3, 4, 8] * 24)
    res = gptq_quantize_mixed(W, H, widths, group_size=16)
    qw = res.qweight
    assert [s.bits for s in qw.segments] == [8, 4, 3, 2]
    assert [s.n_cols for s in qw.segments] == [24, 24, 24, 24]
    assert qw.nominal_bits == pytest.approx(widths.float().mean().item())
    torch.testing.assert_close(qw.dequantize(), res.dequantized, rtol=0, atol=1e-6)
    stored_width = torch.cat([torch.full((s.n_cols,), s.bits) for s in qw.segments])
    assert torch.equal(stored_width[torch.argsort(qw.perm)], widths)  # every column kept its own width
    # without error feedback (H = I) columns at 8 bits are nearly exact; those at 2 bits are not
    err = (gptq_quantize_mixed(W, torch.eye(96), widths, group_size=16).dequantized - W).abs().mean(0)
    assert err[widths == 8].mean() < 0.05 * err[widths == 2].mean()


def test_column_groups_split_classes_into_grids_of_consecutive_members():
    widths = torch.tensor([3, 2, 3, 3, 2, 3])
    cg = column_groups(widths, torch.tensor([5, 4, 3, 2, 1, 0]), group_size=2)
    assert cg.classes == [3, 2]
    assert [p.tolist() for _, p in cg.groups] == [[0, 2], [3, 5], [1, 4]]  # positions in processing order
    assert cg.order[cg.members[0]].tolist() == [5, 3, 2, 0]


def test_mse_grid_lowers_the_weighted_error():
    W, X, H = _problem()
    widths = torch.full((96,), 3)
    minmax = gptq_quantize_mixed(W, H, widths, group_size=32, grid="minmax")
    mse = gptq_quantize_mixed(W, H, widths, group_size=32, grid="mse")
    assert _output_error(W, mse.dequantized, X) < _output_error(W, minmax.dequantized, X)


@pytest.mark.parametrize(("codebook", "group_size"), [("lloyd_max", None), ("quantile", None), ("lloyd_max", 24)])
def test_codebook_grids_pack_and_store_exactly(codebook, group_size):
    from torch import nn

    from bayesquant.nn.layers import QuantLinear

    W, _, H = _problem(rows=16, columns=96)
    widths = torch.tensor([2, 3, 4] * 32)
    res = gptq_quantize_mixed(W, H, widths, group_size=group_size, codebook=codebook)
    n_groups = 1 if group_size is None else 32 // group_size + 1  # 32 columns per width class
    assert all(s.is_codebook and s.codebook.shape == (16, n_groups, 1 << s.bits) for s in res.qweight.segments)
    torch.testing.assert_close(res.qweight.dequantize(), res.dequantized, rtol=0, atol=0)
    # every quantized value is one of its row's levels
    seg = res.qweight.segments[0]
    first = seg.dequantize()[:, : seg.group_size]  # the columns of the first grid
    assert torch.all((first[..., None] == seg.codebook[:, 0, None, :]).any(-1))
    packed = QuantLinear.from_float(nn.Linear(96, 16, bias=False), res.qweight)
    written = sum(getattr(packed, n).numel() * getattr(packed, n).element_size() for n in packed.quant_tensor_names())
    assert mixed_stored_bits(widths, 16, group_size, codebook=True) == 8 * written


def test_lloyd_max_codebook_beats_the_uniform_grid_at_two_bits():
    # per-row codebooks at 2 bits fit the bell-shaped rows better than a min–max affine grid (same solver)
    W, X, H = _problem(rows=32, columns=96)
    widths = torch.full((96,), 2)
    uniform = gptq_quantize_mixed(W, H, widths, grid="minmax")
    lloyd = gptq_quantize_mixed(W, H, widths, codebook="lloyd_max")
    assert _output_error(W, lloyd.dequantized, X) < 0.8 * _output_error(W, uniform.dequantized, X)
    with pytest.raises(ValueError, match="codebook='log'"):
        gptq_quantize_mixed(W, H, widths, codebook="log")


def test_equal_loss_allocation_gives_a_bit_per_factor_four_of_loss():
    # θ = 2: a column with 4× the loss of another gets one more bit (equal loss per weight afterwards)
    loss = torch.tensor([1.0, 4.0, 16.0, 64.0] * 8)
    widths = equal_loss_widths(loss, torch.full((32,), 3), rows=10, budget=Budget(3.5), candidates=(1, 2, 3, 4, 5, 6))
    assert widths.double().mean() == pytest.approx(3.5)
    assert widths[:4].tolist() == [2, 3, 4, 5]
    assert torch.equal(widths.view(8, 4), widths[:4].expand(8, 4))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_baq_beats_uniform_gptq_at_the_same_mean_width(bits):
    W, X, H = _problem(spread=1.0)
    uniform = gptq_quantize(W, H, bits, group_size=32, act_order=True)
    res, widths, trace = baq_quantize(W, H, Budget(bits), group_size=32, rounds=2)
    assert widths.double().mean() == pytest.approx(bits)  # the budget, met exactly
    assert len(set(widths.tolist())) > 1
    assert trace.kept >= 1 and len(trace.loss) == 3
    assert _output_error(W, res.dequantized, X) < 0.7 * _output_error(W, uniform.dequantized, X)


@pytest.mark.parametrize("group_size", [None, 32])
def test_baq_storable_budget_counts_exactly_the_bytes_written(group_size):
    from torch import nn

    from bayesquant.nn.layers import QuantLinear

    W, _, H = _problem(rows=64, columns=384)
    res, widths, _ = baq_quantize(W, H, Budget(3.5, "storable"), group_size=group_size)
    lin = nn.Linear(384, 64, bias=False)
    packed = QuantLinear.from_float(lin, res.qweight)
    written = sum(
        getattr(packed, n).numel() * getattr(packed, n).element_size() * 8 for n in packed.quant_tensor_names()
    )
    assert mixed_stored_bits(widths, 64, group_size) == written
    assert 3.4 <= written / W.numel() <= 3.51  # within the budget (+0.01), and not far below it
    # a float16 scale and zero per 32 weights: 1 bit per weight of overhead, plus partial grids and the perm
    assert widths.double().mean() < (2.5 if group_size else 3.5)


def test_baq_storable_widths_merge_a_class_whose_grids_cost_more_than_it_gains():
    from bayesquant.solvers.mixed import storable_widths

    loss = torch.tensor([1.0, 4.0] * 8)  # two kinds of column: equal-loss widths one bit apart
    budget = Budget(4.0 + 32 / 16 + 0.5, "storable")  # one class at 4 bits and its grid, or two at 2.4 code bits
    nominal = equal_loss_widths(loss, torch.full((16,), 3), 16, Budget(budget.bits - (2 * 32 + 1) / 16))
    assert len(set(nominal.tolist())) == 2  # without merging: two classes, each paying 2 bits per weight of grids
    widths = storable_widths(loss, torch.full((16,), 3), 16, budget, None, candidates=(1, 2, 3, 4, 5, 6, 8))
    assert widths.tolist() == [4] * 16  # one class, its second grid spent on codes
    assert mixed_stored_bits(widths, 16, None) / 256 <= budget.bits
    # a wide layer: a class costs a small fraction of a bit per weight, so two stay, and the budget is met
    loss = torch.tensor([1.0, 4.0] * 192)
    budget = Budget(3.5 + (2 * 32 + 1) / 384, "storable")
    widths = storable_widths(loss, torch.full((384,), 3), 64, budget, None)
    assert sorted(set(widths.tolist())) == [3, 4]
    assert budget.bits - 0.01 < mixed_stored_bits(widths, 64, None) / (64 * 384) <= budget.bits + 0.002


def test_storable_search_gets_past_targets_that_merging_undoes():
    # columns of nearly equal loss: any target between 3 and 3.5 code bits gives a 3/4 mix whose 4-bit class is
    # merged down to one 3-bit class (3.510 bits stored, above the 3.4965 budget) — the search must step below 3
    from bayesquant.solvers.mixed import storable_widths

    loss = torch.exp(0.1 * torch.randn(576, generator=torch.Generator().manual_seed(0)))
    budget = Budget(3.4965, "storable")
    widths = storable_widths(loss, torch.full((576,), 3), 1536, budget, 64, candidates=(1, 2, 3, 4, 5, 6, 8))
    assert mixed_stored_bits(torch.full((576,), 3), 1536, 64) / (1536 * 576) > budget.bits + 0.01
    assert budget.bits - 0.01 < mixed_stored_bits(widths, 1536, 64) / (1536 * 576) <= budget.bits + 0.002
    assert sorted(set(widths.tolist())) == [2, 3]


@pytest.mark.integration
@pytest.mark.parametrize(("method", "quantizer"), [("baq", "uniform"), ("bayesq", "uniform"), ("bayesq", "lloyd_max")])
def test_mixed_methods_on_digit_cnn_save_load_and_keep_accuracy(method, quantizer, tmp_path):
    from bayesquant.api import quantize
    from bayesquant.config import QuantizeConfig
    from bayesquant.eval import evaluate
    from bayesquant.io import load_quantized, size_report

    # a storable budget, met as the file counts it: BayesQ's over the whole model, BAQ's shared among the layers
    cfg = QuantizeConfig(method=method, bits=3.5, budget="storable", nsamples=128, posterior_nsamples=128,
                         quantizer=quantizer)  # fmt: skip
    result = quantize("digit-cnn", cfg)
    out = result.save(tmp_path / method)
    size = size_report(out)
    assert 3.47 < size["storable_bits"] <= 3.5 + 0.01
    if method == "baq":  # each layer's budget is its share plus what the layer before left unspent
        names = [m.name for m in result.report.modules]
        n = {m.name: math.prod(m.shape) for m in result.report.modules}
        shares, notes = result.log.plan_meta["layer_storable_bits"], result.log.notes
        for prev, name in itertools.pairwise(names):
            stored = mixed_stored_bits(torch.tensor(result.log.widths[prev]), result.report.qweights[prev].shape[0],
                                       None) / n[prev]  # fmt: skip
            left = (notes[prev]["budget"] - stored) * n[prev]
            assert notes[name]["budget"] == pytest.approx(shares[name] + left / n[name])
        assert sum(shares[k] * n[k] for k in names) == pytest.approx(3.5 * sum(n.values()))
    meta = json.loads((out / "config.json").read_text())
    widths = [w for spec in meta["plan"].values() for w in spec.get("column_bits", [])]
    assert len(set(widths)) > 1  # mixed precision happened
    loaded = load_quantized(out)
    acc = evaluate(loaded, "mnist:test", max_examples=500)["accuracy"]
    assert acc > 0.97
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded.module(x), result.model.module(x))


def test_mixed_grid_range_defaults_to_the_model_familys():
    from bayesquant.config import QuantizeConfig
    from bayesquant.models.family import FAMILIES

    cfg = QuantizeConfig(method="bayesq", bits=3.0)
    assert cfg.grid is None  # settled by the model
    assert cfg.for_model(FAMILIES["resnet"]).grid == "minmax"
    assert cfg.for_model(FAMILIES["small-net"]).grid == "minmax"
    assert cfg.for_model(FAMILIES["llama"]).grid == "mse"
    assert cfg.for_model(FAMILIES["bert-classifier"]).grid == "mse"
    given = QuantizeConfig(method="bayesq", bits=3.0, grid="mse")
    assert given.for_model(FAMILIES["resnet"]).grid == "mse"  # what the user asks for wins
    baq = QuantizeConfig(method="baq", bits=3.0)
    assert baq.grid is None and baq.for_model(FAMILIES["resnet"]).grid == "minmax"
    assert baq.for_model(FAMILIES["llama"]).grid == "mse"
    assert QuantizeConfig(method="gptq", bits=3).grid == "minmax"


def test_mixed_method_config_errors():
    from bayesquant.config import QuantizeConfig
    from bayesquant.errors import UserError

    with pytest.raises(UserError, match=r"--bits 3.5: must be an integer .* bayesq or baq"):
        QuantizeConfig(method="gptq", bits=3.5)
    with pytest.raises(UserError, match="--budget 'bytes'"):
        QuantizeConfig(method="baq", bits=3.5, budget="bytes")
    with pytest.raises(UserError, match="--grid"):
        QuantizeConfig(method="bayesq", bits=3, grid="percentile")
    with pytest.raises(UserError, match=r"--quantizer lloyd_max: .* drop --static-groups"):
        QuantizeConfig(method="gptq", bits=3, group_size=64, static_groups=True, quantizer="lloyd_max")
    assert QuantizeConfig(method="bayesq", bits=3.25).act_order is True
    assert QuantizeConfig(method="gptq", bits=3.0).bits == 3


def test_baq_keeps_its_smallest_round_when_a_layer_cannot_meet_a_storable_budget():
    # 9 columns with one float16 scale and zero per row: the grid alone is 32/9 = 3.6 bits per weight
    W, _, H = _problem(rows=8, columns=9)
    res, widths, trace = baq_quantize(W, H, Budget(3.0, "storable"), rounds=1, min_bits=2)
    assert not trace.met_budget and min(trace.spent) > 3.0
    assert widths.tolist() == [3] * 9  # the budget's width, not the 2 bits the allocation fell to
    assert res.qweight.perm is None and res.qweight.nominal_bits == 3
    assert trace.spent[trace.kept] == pytest.approx(3 + 32 / 9)  # codes and one scale and zero per row, no perm


@pytest.mark.parametrize(("widths", "group_size", "act_order", "stored"), [
    ([3] * 12, None, True, False), ([3] * 12, 4, True, True), ([3] * 12, 4, False, False),
    ([4] * 6 + [2] * 6, None, False, False), ([2] * 6 + [4] * 6, None, False, "segments"),
    ([2] * 6 + [4] * 6, None, True, "segments"), ([2, 3, 4] * 4, None, True, "segments"),
    ([2] * 6 + [4] * 6, 4, True, True), ([2] * 6 + [4] * 6, 4, False, "segments"),
])  # fmt: skip
def test_stored_bits_count_a_permutation_only_where_one_is_stored(widths, group_size, act_order, stored):
    # act-order with several grids per class keeps the processing order (int16 indices); otherwise each class
    # is stored in ascending column order and the permutation is a segment map (1 or 2 bits per column here)
    from torch import nn

    from bayesquant.nn.layers import QuantLinear

    W, _, H = _problem(rows=8, columns=12)
    widths = torch.tensor(widths)
    res = gptq_quantize_mixed(W, H, widths, group_size=group_size, act_order=act_order)
    packed = QuantLinear.from_float(nn.Linear(12, 8, bias=False), res.qweight)
    assert packed.spec()["perm"] == stored
    written = sum(getattr(packed, n).numel() * getattr(packed, n).element_size() for n in packed.quant_tensor_names())
    assert mixed_stored_bits(widths, 8, group_size, act_order=act_order) == 8 * written
    torch.testing.assert_close(
        packed.dequantized_weight(), res.qweight.with_stored_grids().dequantize(), rtol=0, atol=0
    )
    torch.testing.assert_close(res.qweight.dequantize(), res.dequantized, rtol=0, atol=0)


@pytest.mark.integration
def test_bayesq_with_the_task_loss_table_on_digit_cnn():
    from bayesquant.api import quantize
    from bayesquant.config import QuantizeConfig
    from bayesquant.errors import UserError

    with pytest.raises(UserError, match="--metric mc_task_loss: measured per layer; add --granularity layer"):
        QuantizeConfig(method="bayesq", bits=3, metric="mc_task_loss")
    cfg = QuantizeConfig(method="bayesq", bits=3.0, metric="mc_task_loss", granularity="layer", nsamples=128,
                         posterior_nsamples=128, max_bits=6)  # fmt: skip
    result = quantize("digit-cnn", cfg)
    assert result.config.grid == "minmax"  # the small nets' grid range, recorded as used
    assert result.log.plan_meta["metric"] == "mc_task_loss"
    widths = {name: set(w) for name, w in result.log.widths.items()}
    assert all(len(w) == 1 for w in widths.values())  # one width per layer
    assert len(set.union(*widths.values())) > 1  # and not the same one everywhere
    sizes = [math.prod(m.shape) for m in result.report.modules]
    nominal = sum(m.nominal_bits * n for m, n in zip(result.report.modules, sizes, strict=True)) / sum(sizes)
    assert 2.0 <= nominal <= 3.0


def test_storable_shares_give_each_layer_equal_code_bits_plus_its_own_grids():
    from bayesquant.solvers.mixed import storable_shares

    shapes = [(64, 384), (32, 16), (8, 100)]
    sizes = [r * c for r, c in shapes]
    # two width classes: one grid of 32 bits per row and started group of 32 columns, one partial group more,
    # and an int16 column index per column
    shares = storable_shares(shapes, 3.5, 32, codebook=False)
    storage = [64 * 13 * 32 + 16 * 384, 32 * 2 * 32 + 16 * 16, 8 * 5 * 32 + 16 * 100]
    code = [s - o / n for s, o, n in zip(shares, storage, sizes, strict=True)]
    assert code == pytest.approx([code[0]] * 3)  # the same code bits everywhere
    assert sum(s * n for s, n in zip(shares, sizes, strict=True)) == pytest.approx(3.5 * sum(sizes))
    # per-row grids: two per row and a 1-bit segment map; one class: no map
    two = storable_shares(shapes, 3.0, None, codebook=False)
    assert two[1] - two[0] == pytest.approx((2 * 32 / 16 + 1 / 32) - (2 * 32 / 384 + 1 / 64))
    one = storable_shares(shapes, 3.0, None, codebook=False, classes=1)
    assert one[1] - one[0] == pytest.approx(32 / 16 - 32 / 384)
    assert sum(s * n for s, n in zip(one, sizes, strict=True)) == pytest.approx(3.0 * sum(sizes))


@pytest.mark.parametrize("budget", [3.0, 3.5, 4.25])
def test_bayesq_storable_allocation_fills_its_budget_with_merged_classes(budget):
    from bayesquant.allocation.costs import posterior_cost_table
    from bayesquant.api import _allocate_exactly, _candidates
    from bayesquant.config import QuantizeConfig
    from bayesquant.posterior import Posterior

    gen = torch.Generator().manual_seed(0)
    shapes = {"a": (24, 96), "b": (12, 40), "c": (48, 32)}  # small layers: a width class costs 0.3-1 bit per weight
    mean = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    # a data curvature spread over four orders of magnitude, and a prior
    var = {k: 1 / (1.0 + 10 ** (4 * torch.rand(s, generator=gen, dtype=torch.float64))) for k, s in shapes.items()}
    post = Posterior(mean, var, {"prior_precision": 1.0})
    cfg = QuantizeConfig(method="bayesq", bits=budget, budget="storable")
    table = posterior_cost_table(post, granularity="column", metric="expected_loss", bits=_candidates(cfg))
    alloc = _allocate_exactly(table, post, cfg)
    n = sum(r * c for r, c in shapes.values())

    def stored(name, widths):
        return mixed_stored_bits(widths, shapes[name][0], None, False, True)

    per_module = {k: torch.tensor(w) for k, w in alloc.per_module().items()}
    total = sum(stored(k, w) for k, w in per_module.items())
    assert total / n == pytest.approx(alloc.extra["storable_bits_exact"])
    assert total / n <= budget + 0.002  # met as the file counts it
    assert alloc.extra["merged_classes"] > 0
    spare = budget * n - total  # what is left is too little for any single column upgrade
    for name, w in per_module.items():
        for j in range(len(w)):
            for b in (c for c in _candidates(cfg) if c > w[j]):
                up = w.clone()
                up[j] = b
                assert stored(name, up) - stored(name, w) > spare
