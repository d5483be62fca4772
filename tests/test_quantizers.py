"""Uniform quantizer, groups, the quantizer registry, the STE and argument checks."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from bayesquant.errors import UserError
from bayesquant.quantizers import (
    QUANTIZERS,
    dequantize_groups,
    dequantize_uniform,
    expand_groups,
    fake_quant_ste,
    fake_quantize_uniform,
    fit_log,
    fit_log_groups,
    fit_quantile,
    fit_uniform,
    fit_uniform_groups,
    lloyd_max,
    quantize_groups,
    quantize_uniform,
    ste,
)
from bayesquant.quantizers import uniform as uniform_module

KINDS = QUANTIZERS.names()


def _data(kind: str, rows: int = 6, cols: int = 96, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g, dtype=dtype)
    return torch.exp(0.7 * x) if kind == "log" else x  # the log quantizer needs positive data (σ)


def _reference_find_params(x, bits, sym, mse, norm=2.4, grid=100, maxshrink=0.8):
    """A literal port of the GPTQ reference's Quantizer.find_params (per channel)."""
    maxq = 2**bits - 1
    tmp = torch.zeros(x.shape[0], dtype=x.dtype)
    xmin, xmax = torch.minimum(x.min(1)[0], tmp), torch.maximum(x.max(1)[0], tmp)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        tmp = xmin < 0
        if torch.any(tmp):
            xmin[tmp] = -xmax[tmp]
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp], xmax[tmp] = -1, +1
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    if mse:
        best = torch.full([x.shape[0]], float("inf"), dtype=x.dtype)
        for i in range(int(maxshrink * grid)):
            p = 1 - i / grid
            xmin1, xmax1 = p * xmin, p * xmax
            scale1 = (xmax1 - xmin1) / maxq
            zero1 = torch.round(-xmin1 / scale1) if not sym else zero
            q = torch.clamp(torch.round(x / scale1.unsqueeze(1)) + zero1.unsqueeze(1), 0, maxq)
            q = scale1.unsqueeze(1) * (q - zero1.unsqueeze(1))
            err = torch.sum((q - x).abs().pow(norm), 1)
            tmp = err < best
            if torch.any(tmp):
                best[tmp] = err[tmp]
                scale[tmp], zero[tmp] = scale1[tmp], zero1[tmp]
    return scale.unsqueeze(1), zero.unsqueeze(1)


# ---------------------------------------------------------------- uniform


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("mse", [False, True])
def test_uniform_matches_the_gptq_reference(sym, mse):
    w = _data("uniform")
    w[0] = 0.0  # an all-zero row takes the reference's [-1, 1] guard
    scale, zero = _reference_find_params(w, 3, sym, mse)
    p = fit_uniform(w, 3, symmetric=sym, method="mse" if mse else "minmax")
    torch.testing.assert_close(p.scale, scale)
    torch.testing.assert_close(p.zero, zero)
    q_ref = scale * (torch.clamp(torch.round(w / scale) + zero, 0, 7) - zero)
    torch.testing.assert_close(fake_quantize_uniform(w, p), q_ref, rtol=0, atol=0)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"symmetric": True},
        {"symmetric": True, "midrise": True},
        {"method": "percentile"},
        {"method": "mse", "norm": 2.0},
        {"method": "mse", "symmetric": True, "midrise": True},
    ],
    ids=["minmax", "sym", "midrise", "percentile", "mse", "mse-midrise"],
)
def test_uniform_codes_in_range_and_grid_points_round_trip_exactly(bits, kw):
    w = _data("uniform")
    p = fit_uniform(w, bits, **kw)
    codes = quantize_uniform(w, p)
    assert codes.dtype == torch.uint8 and codes.shape == w.shape
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    torch.testing.assert_close(dequantize_uniform(codes, p), fake_quantize_uniform(w, p), rtol=0, atol=1e-12)
    g = torch.Generator().manual_seed(bits)
    on_grid_codes = torch.randint(0, 2**bits, w.shape, generator=g).to(torch.uint8)
    on_grid = dequantize_uniform(on_grid_codes, p)  # weights that already lie on the grid
    assert torch.equal(quantize_uniform(on_grid, p), on_grid_codes)
    assert torch.equal(dequantize_uniform(quantize_uniform(on_grid, p), p), on_grid)


def test_midrise_grid_is_symmetric_about_zero():
    p = fit_uniform(_data("uniform"), 3, symmetric=True, midrise=True)
    levels = dequantize_uniform(torch.arange(8).expand(p.scale.shape[0], 8), p)  # (rows, 8)
    torch.testing.assert_close(levels, -levels.flip(1))
    torch.testing.assert_close(levels[:, -1:], _data("uniform").abs().amax(1, keepdim=True))


def test_percentile_range_is_the_5th_to_95th_percentile():
    w = _data("uniform", rows=4, cols=1001)
    p = fit_uniform(w, 4, method="percentile")
    lo, hi = torch.quantile(w, 0.05, dim=1, keepdim=True), torch.quantile(w, 0.95, dim=1, keepdim=True)
    torch.testing.assert_close(p.scale, (hi - lo) / 15)
    q = fake_quantize_uniform(w, p)  # the integer zero shifts the grid by at most half a step
    assert torch.all(q.amin(1, keepdim=True) >= lo - p.scale / 2 - 1e-12)
    assert torch.all(q.amax(1, keepdim=True) <= hi + p.scale / 2 + 1e-12)


def test_weighted_mse_search():
    w = _data("uniform")
    plain = fit_uniform(w, 3, method="mse", norm=2)
    ones = fit_uniform(w, 3, method="mse", norm=2, weights=torch.ones_like(w))
    torch.testing.assert_close(ones.scale, plain.scale)
    outliers = w.abs() > 1.5
    ignored = fit_uniform(w, 3, method="mse", norm=2, weights=(~outliers).double())  # outliers cost nothing
    assert torch.all(ignored.scale <= plain.scale) and torch.any(ignored.scale < plain.scale)


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_mse_search_gives_the_same_grids_in_row_blocks(monkeypatch, symmetric):
    w = _data("uniform", rows=7, cols=40)
    wt = torch.rand_like(w)
    whole = fit_uniform(w, 3, method="mse", symmetric=symmetric, weights=wt)
    monkeypatch.setattr(uniform_module, "_SEARCH_ROWS", 3)  # blocks of 3, 3 and 1 rows
    blocks = fit_uniform(w, 3, method="mse", symmetric=symmetric, weights=wt)
    assert torch.equal(blocks.scale, whole.scale) and torch.equal(blocks.zero, whole.zero)
    shuffled = fit_uniform(w.flip(0), 3, method="mse", symmetric=symmetric, weights=wt.flip(0))  # rows stay apart
    assert torch.equal(shuffled.scale.flip(0), whole.scale)


@pytest.mark.parametrize("group_size", [16, 20, None, 500])
@pytest.mark.parametrize("kw", [{}, {"method": "percentile"}, {"method": "mse"}, {"symmetric": True}])
def test_group_params_equal_per_row_fits_of_each_slice(group_size, kw):
    w = _data("uniform", rows=5, cols=96)
    p = fit_uniform_groups(w, 3, group_size, **kw)
    g = group_size if group_size and group_size < 96 else 96
    slices = [fit_uniform(w[:, i : i + g], 3, **kw) for i in range(0, 96, g)]
    assert p.scale.shape == (5, len(slices))
    torch.testing.assert_close(p.scale, torch.cat([s.scale for s in slices], 1))
    torch.testing.assert_close(p.zero, torch.cat([s.zero for s in slices], 1))
    codes = quantize_groups(w, p, group_size)
    expected = torch.cat(
        [quantize_uniform(w[:, i : i + g], s) for i, s in zip(range(0, 96, g), slices, strict=True)], 1
    )
    assert torch.equal(codes, expected)
    assert torch.equal(dequantize_groups(codes, p, group_size), fake_quantize_uniform(w, expand_groups(p, g, 96)))


def test_log_groups_equal_per_slice_fits():
    w = _data("log", cols=50)
    p = fit_log_groups(w, 4, 16)  # groups of 16, 16, 16, 2
    slices = [fit_log(w[:, i : i + 16], 4) for i in range(0, 50, 16)]
    torch.testing.assert_close(p.log_min, torch.cat([s.log_min for s in slices], 1))
    torch.testing.assert_close(p.log_step, torch.cat([s.log_step for s in slices], 1))


def test_per_tensor_grid_and_zero_rows():
    w = _data("uniform")
    p = fit_uniform(w.reshape(1, -1), 4)
    assert p.scale.shape == (1, 1)
    torch.testing.assert_close(p.scale, (w.max() - w.min()).reshape(1, 1) / 15)
    z = torch.zeros(3, 8)
    for method in ("minmax", "percentile", "mse"):
        q = fake_quantize_uniform(z, fit_uniform(z, 2, method=method))
        assert torch.equal(q, z)


# ---------------------------------------------------------------- registry and STE


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_every_kind_returns_codes_in_range_and_round_trips(kind, bits):
    w = _data(kind)
    codes, deq, params = QUANTIZERS.get(kind)(w, bits)
    assert codes.dtype == torch.uint8 and codes.shape == w.shape and deq.shape == w.shape
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    assert torch.isfinite(deq).all()
    if isinstance(params, torch.Tensor):  # codebook (rows, 2**bits), ascending
        assert params.shape == (w.shape[0], 2**bits)
        assert torch.all(params[:, 1:] >= params[:, :-1])
        torch.testing.assert_close(deq, params.gather(1, codes.long()))
    # quantizing the dequantized weights again with the same parameters changes nothing
    again = QUANTIZERS.get(kind)(deq, bits)
    if kind in ("uniform", "log"):
        assert torch.allclose(again.dequantized, deq, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_error_falls_as_bits_rise(kind):
    w = _data(kind, rows=8, cols=512)
    mse = [float(((QUANTIZERS.get(kind)(w, b).dequantized - w) ** 2).mean()) for b in range(1, 9)]
    assert all(a > b for a, b in itertools.pairwise(mse)), mse
    assert mse[-1] < 1e-3 * mse[0]


@pytest.mark.parametrize("kind", KINDS)
def test_ste_gradient_is_the_identity(kind):
    w = _data(kind, rows=4, cols=10).requires_grad_(True)
    y = fake_quant_ste(w, 3, kind=kind)
    torch.testing.assert_close(y.detach(), QUANTIZERS.get(kind)(w.detach(), 3).dequantized)
    upstream = torch.randn_like(w)
    (y * upstream).sum().backward()
    torch.testing.assert_close(w.grad, upstream, rtol=0, atol=0)
    jac = torch.autograd.functional.jacobian(lambda v: fake_quant_ste(v, 2, kind=kind), w.detach()[:1, :4])
    torch.testing.assert_close(jac.reshape(4, 4), torch.eye(4, dtype=w.dtype))


def test_ste_of_a_conv_shaped_weight_and_plain_ste():
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    y = fake_quant_ste(w, 4)
    assert y.shape == w.shape
    y.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    a = torch.tensor([0.3], requires_grad=True)
    ste(a, torch.tensor([1.0])).backward()
    assert a.grad.item() == 1.0


def test_weights_per_kind():
    w = _data("uniform")
    wt = torch.rand_like(w)
    for kind in ("uniform", "quantile", "lloyd_max"):
        assert QUANTIZERS.get(kind)(w, 3, wt).codes.shape == w.shape
    with pytest.raises(ValueError, match="weights"):
        QUANTIZERS.get("log")(_data("log"), 3, wt)
    with pytest.raises(ValueError, match="weights"):
        fit_uniform(w, 3, method="minmax", weights=wt)


# ---------------------------------------------------------------- argument checks


def _fit_kind(kind, w, bits):
    return QUANTIZERS.get(kind)(w.abs() + 0.1, bits)


@pytest.mark.parametrize("bits", [0, 9, -1, 2.0, True, "4"])
@pytest.mark.parametrize(
    "fn",
    [
        lambda w, b: fit_uniform(w, b),
        lambda w, b: fit_uniform_groups(w, b, 8),
        lambda w, b: fit_quantile(w, b),
        lambda w, b: lloyd_max(w, b),
        lambda w, b: fit_log(w.abs() + 0.1, b),
        lambda w, b: fake_quant_ste(w, b),
        *[functools.partial(_fit_kind, k) for k in KINDS],
    ],
)
def test_bad_bits_raise_a_value_error_naming_the_argument(fn, bits):
    with pytest.raises(ValueError, match=r"bits=.*must be an integer in 1\.\.8"):
        fn(torch.randn(4, 16), bits)


def test_bad_arguments_are_named():
    w = torch.randn(4, 16)
    with pytest.raises(UserError, match=r"--quantizer 'nope'.*valid: .*lloyd_max"):
        QUANTIZERS.get("nope")
    with pytest.raises(ValueError, match=r"method='l2'.*valid: minmax, percentile, mse"):
        fit_uniform(w, 3, method="l2")
    with pytest.raises(ValueError, match="group_size=0"):
        fit_uniform_groups(w, 3, 0)
    with pytest.raises(ValueError, match="midrise"):
        fit_uniform(w, 3, midrise=True)
    with pytest.raises(ValueError, match="2-D"):
        fit_uniform(torch.randn(16), 3)
    with pytest.raises(ValueError, match="NaN"):
        fit_uniform(torch.tensor([[1.0, float("nan")]]), 3)
    with pytest.raises(ValueError, match="n_groups"):
        quantize_groups(w, fit_uniform_groups(w, 3, 4), 8)
