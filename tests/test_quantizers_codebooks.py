"""Lloyd–Max (golden Gaussian numbers), the optimal uniform step, the quantile quantizer and the log quantizer."""

from __future__ import annotations

import math
import time

import pytest
import torch
from scipy.stats import norm

from bayesquant.quantizers import (
    assign_by_edges,
    assign_nearest,
    dequantize_codebook,
    dequantize_log,
    fit_gaussian,
    fit_log,
    fit_quantile,
    fit_uniform,
    gaussian_quantile_edges,
    gaussian_quantile_levels,
    lloyd_max,
    quantize_log,
)

LLOYD_MAX_GAUSSIAN_MSE = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}  # Max (1960), σ = 1
LLOYD_MAX_GAUSSIAN_LEVELS = {  # positive half of the optimal codebook, Max (1960), σ = 1
    1: [0.7979],
    2: [0.4528, 1.510],
    3: [0.2451, 0.7560, 1.344, 2.152],
    4: [0.1284, 0.3881, 0.6568, 0.9424, 1.256, 1.618, 2.069, 2.733],
}
OPTIMAL_UNIFORM_STEP = {2: 0.996, 3: 0.586, 4: 0.335}  # Max (1960), mid-rise, σ = 1


@pytest.fixture(scope="module")
def gaussian_1e6() -> torch.Tensor:
    return torch.randn(10**6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# ---------------------------------------------------------------- acceptance


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_lloyd_max_reaches_the_gaussian_optimum(gaussian_1e6, bits):
    start = time.perf_counter()
    codebook = lloyd_max(gaussian_1e6, bits)
    codes = assign_nearest(gaussian_1e6, codebook)
    seconds = time.perf_counter() - start
    mse = float(((dequantize_codebook(codes, codebook) - gaussian_1e6) ** 2).mean())
    print(f"lloyd_max bits={bits}: mse={mse:.6f} (optimum {LLOYD_MAX_GAUSSIAN_MSE[bits]}), {seconds:.2f} s")
    assert abs(mse / LLOYD_MAX_GAUSSIAN_MSE[bits] - 1) < 0.005
    # sampling noise moves the MSE by a few tenths of a percent; on the same samples the fitted codebook must
    # do at least as well as the published optimal one
    half = torch.tensor(LLOYD_MAX_GAUSSIAN_LEVELS[bits], dtype=torch.float64)
    published = torch.cat([-half.flip(0), half])
    published_mse = float(
        ((dequantize_codebook(assign_nearest(gaussian_1e6, published), published) - gaussian_1e6) ** 2).mean()
    )
    assert mse <= published_mse * (1 + 1e-4)
    torch.testing.assert_close(codebook, published, atol=0.03, rtol=0)
    assert seconds < 5


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_mse_optimal_midrise_uniform_step(gaussian_1e6, bits):
    x = gaussian_1e6.float().reshape(1, -1)
    p = fit_uniform(x, bits, symmetric=True, midrise=True, method="mse", norm=2, grid=400)
    step = float(p.scale)
    print(f"uniform mid-rise bits={bits}: step={step:.4f}σ (published {OPTIMAL_UNIFORM_STEP[bits]}σ)")
    assert abs(step / OPTIMAL_UNIFORM_STEP[bits] - 1) < 0.02


# ---------------------------------------------------------------- Lloyd–Max


def test_lloyd_max_rows_are_independent_and_sorted():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 300, generator=g, dtype=torch.float64) * torch.arange(1, 6, dtype=torch.float64)[:, None]
    cb = lloyd_max(x, 3)
    assert cb.shape == (5, 8) and torch.all(cb[:, 1:] >= cb[:, :-1])
    for r in range(5):
        torch.testing.assert_close(cb[r], lloyd_max(x[r], 3))


def test_lloyd_max_fixed_point_conditions():
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cb = lloyd_max(x, 2, iters=1000, tol=0.0)
    codes = assign_nearest(x, cb).long()
    centroids = torch.stack([x[codes == k].mean() for k in range(4)])
    torch.testing.assert_close(cb, centroids, atol=1e-6, rtol=0)


def test_weighted_lloyd_max_moves_levels_toward_heavy_points():
    x = torch.linspace(0, 1, 1001, dtype=torch.float64)
    plain = lloyd_max(x, 1)
    torch.testing.assert_close(plain, torch.tensor([0.25, 0.75], dtype=torch.float64), atol=2e-3, rtol=0)
    heavy = torch.where(x > 0.9, 100.0, 1.0).double()
    weighted = lloyd_max(x, 1, heavy)
    assert weighted[1] > plain[1] + 0.1  # the upper level moves toward the heavy cluster near 0.95
    assert weighted[0] > plain[0]

    def weighted_mse(cb):
        return float((heavy * (dequantize_codebook(assign_nearest(x, cb), cb) - x) ** 2).sum())

    assert weighted_mse(weighted) < weighted_mse(plain)


def test_lloyd_max_two_clusters_and_few_distinct_values():
    x = torch.tensor([0.0, 1.0, 10.0, 11.0], dtype=torch.float64)
    w = torch.tensor([3.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(lloyd_max(x, 1, w), torch.tensor([0.25, 10.5], dtype=torch.float64))
    discrete = torch.tensor([[0.0, 0.0, 1.0, 5.0, 5.0, 5.0]], dtype=torch.float64)  # 3 values, 8 levels
    cb = lloyd_max(discrete, 3)
    assert torch.isfinite(cb).all() and torch.all(cb[:, 1:] >= cb[:, :-1])
    assert torch.equal(dequantize_codebook(assign_nearest(discrete, cb), cb), discrete)
    assert torch.equal(lloyd_max(torch.full((2, 5), 3.0), 2), torch.full((2, 4), 3.0))


def test_assign_nearest_picks_the_closest_level():
    cb = torch.tensor([[-1.0, 0.0, 2.0, 2.5]])
    x = torch.tensor([[-5.0, -0.6, -0.4, 0.9, 1.1, 2.2, 2.3, 9.0]])
    assert assign_nearest(x, cb).tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]
    with pytest.raises(ValueError, match="sorted"):
        assign_nearest(x, cb.flip(1))


# ---------------------------------------------------------------- quantile (paper (c) §3.3)


@pytest.mark.parametrize("bits", range(1, 9))
def test_quantile_levels_follow_the_paper(bits):
    m = 2**bits
    mean, std = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)
    edges = gaussian_quantile_edges(mean, std, bits)[0]
    torch.testing.assert_close(edges, torch.from_numpy(0.3 + 2.0 * norm.ppf(torch.arange(1, m) / m)))
    levels = gaussian_quantile_levels(mean, std, bits)[0]
    assert levels.shape == (m,) and torch.all(levels[1:] > levels[:-1])
    torch.testing.assert_close(levels[0], torch.tensor(0.3 + 2.0 * norm.ppf(1 / (2 * m)), dtype=torch.float64))
    torch.testing.assert_close(
        levels[-1], torch.tensor(0.3 + 2.0 * norm.ppf((2 * m - 1) / (2 * m)), dtype=torch.float64)
    )
    torch.testing.assert_close(levels[1:-1], (edges[:-1] + edges[1:]) / 2)  # finite cells: value midpoints
    medians = gaussian_quantile_levels(mean, std, bits, midpoint="probability")[0]
    torch.testing.assert_close(medians, torch.from_numpy(0.3 + 2.0 * norm.ppf((2 * torch.arange(m) + 1) / (2 * m))))


@pytest.mark.parametrize("midpoint", ["value", "probability"])
def test_quantile_levels_are_symmetric_for_a_symmetric_fit(midpoint):
    half = torch.randn(4, 100, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w = torch.cat([half, -half], 1) + torch.arange(4, dtype=torch.float64)[:, None]  # symmetric about the row mean
    for bits in range(1, 9):
        cb = fit_quantile(w, bits, midpoint=midpoint)
        centre = torch.arange(4, dtype=torch.float64)[:, None]
        torch.testing.assert_close(cb - centre, -(cb - centre).flip(1), atol=1e-12, rtol=0)


def test_quantile_cells_are_equiprobable_and_weighted_fit():
    w = torch.randn(2, 200_000, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3 + 1
    mean, std = fit_gaussian(w)
    codes = assign_by_edges(w, gaussian_quantile_edges(mean, std, 3))
    freq = torch.stack([torch.bincount(c.long(), minlength=8) for c in codes]) / w.shape[1]
    torch.testing.assert_close(freq, torch.full_like(freq, 1 / 8), atol=0.005, rtol=0)
    x = torch.tensor([[0.0, 2.0, 10.0]], dtype=torch.float64)
    m, s = fit_gaussian(x, torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64))  # the 10 does not count
    assert math.isclose(float(m), 1.0) and math.isclose(float(s), 1.0)


# ---------------------------------------------------------------- log


@pytest.mark.parametrize("bits", range(1, 9))
def test_log_quantizer_relative_error_bound(bits):
    sigma = torch.exp(torch.randn(6, 200, generator=torch.Generator().manual_seed(bits), dtype=torch.float64) * 2)
    p = fit_log(sigma, bits)
    codes = quantize_log(sigma, p)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
    ratio = dequantize_log(codes, p) / sigma
    bound = torch.exp(p.log_step / 2) * (1 + 1e-12)  # (rows, 1)
    assert torch.all(ratio <= bound) and torch.all(ratio >= 1 / bound)
    lo, hi = sigma.amin(1, keepdim=True), sigma.amax(1, keepdim=True)
    levels = dequantize_log(torch.tensor([[0, 2**bits - 1]]), p)
    torch.testing.assert_close(levels, torch.cat([lo, hi], 1))  # the grid spans min..max exactly


def test_log_quantizer_rejects_non_positive_input():
    with pytest.raises(ValueError, match="strictly positive"):
        fit_log(torch.tensor([[0.1, 0.0, 0.3]]), 4)
    p = fit_log(torch.tensor([[0.1, 0.3]]), 4)
    with pytest.raises(ValueError, match="strictly positive"):
        quantize_log(torch.tensor([[-0.1, 0.3]]), p)
    const = torch.full((2, 3), 0.25)
    q = fit_log(const, 3)
    torch.testing.assert_close(dequantize_log(quantize_log(const, q), q), const)
