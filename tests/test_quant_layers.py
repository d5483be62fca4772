from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bayesquant.nn import (
    QuantConv2d,
    QuantizedSegment,
    QuantizedWeight,
    QuantLinear,
    quantize_module_inplace,
    set_dequant_cache,
    unpack_bits,
)
from bayesquant.nn.layers import perm_dtype


def rtn_segment(w: torch.Tensor, bits: int, group_size: int) -> QuantizedSegment:
    """Min-max round-to-nearest of w (out, n) per group of `group_size` columns (a test helper, not a quantizer)."""
    out, n = w.shape
    qmax = 2**bits - 1
    scale = torch.empty(out, math.ceil(n / group_size))
    zero = torch.empty_like(scale)
    codes = torch.empty(out, n, dtype=torch.int64)
    for g in range(scale.shape[1]):
        blk = w[:, g * group_size : (g + 1) * group_size]
        lo, hi = blk.min(1).values.clamp(max=0), blk.max(1).values.clamp(min=0)
        scale[:, g] = ((hi - lo) / qmax).clamp(min=1e-6)
        zero[:, g] = torch.round(-lo / scale[:, g])
        codes[:, g * group_size : (g + 1) * group_size] = torch.clamp(
            torch.round(blk / scale[:, g : g + 1] + zero[:, g : g + 1]), 0, qmax
        )
    return QuantizedSegment(bits, codes, group_size, scale=scale, zero=zero)


def rtn_segments(weight: torch.Tensor, parts: list[tuple[int, int, int]], perm: torch.Tensor | None = None):
    """Segments (bits, n_cols, group_size) over the first (permuted) flattened columns of `weight`."""
    w = weight.detach().reshape(weight.shape[0], -1)
    w = w if perm is None else w[:, perm]
    segs, start = [], 0
    for bits, n_cols, g in parts:
        segs.append(rtn_segment(w[:, start : start + n_cols], bits, g))
        start += n_cols
    return segs


def rtn_weight(weight: torch.Tensor, parts: list[tuple[int, int, int]], perm: torch.Tensor | None = None):
    """QuantizedWeight of `weight` with segments (bits, n_cols, group_size) over the (permuted) flattened columns."""
    return QuantizedWeight(tuple(weight.shape), rtn_segments(weight, parts, perm), perm)


def random_codebook_segment(out, n_cols, bits, group_size, rows):
    codes = torch.randint(0, 2**bits, (out, n_cols))
    cb = torch.randn(rows, math.ceil(n_cols / group_size), 2**bits).sort(-1).values
    return QuantizedSegment(bits, codes, group_size, codebook=cb)


def half_grids(qw: QuantizedWeight) -> QuantizedWeight:
    """The same weight with grids rounded to float16, as the packed modules store them."""
    r = lambda t: None if t is None else t.half().float()  # noqa: E731
    segs = [QuantizedSegment(s.bits, s.codes, s.group_size, r(s.scale), r(s.zero), r(s.codebook)) for s in qw.segments]
    return QuantizedWeight(qw.shape, segs, qw.perm)


def grid_tolerance(qw: QuantizedWeight) -> float:
    """Bound on |W_fp16grid − W_fp32grid|: relative float16 rounding (2⁻¹¹) of scale, zero and levels."""
    bound = 0.0
    for s in qw.segments:
        if s.is_codebook:
            bound = max(bound, s.codebook.abs().max().item() * 2**-10)
        else:
            bound = max(bound, (s.scale.abs().max() * (s.zero.abs().max() + 2**s.bits)).item() * 2**-10)
    return bound


# ---------------------------------------------------------------- QuantizedWeight


def test_per_channel_uniform():
    codes = torch.randint(0, 8, (3, 5))
    scale, zero = torch.rand(3, 1) + 0.1, torch.tensor([[3.0], [4.0], [3.5]])
    qw = QuantizedWeight((3, 5), [QuantizedSegment(3, codes, 5, scale, zero)])
    assert torch.allclose(qw.dequantize(), scale * (codes - zero), rtol=0, atol=1e-6)
    assert qw.dequantize().dtype == torch.float32 and qw.nominal_bits == 3


def test_grouped_with_partial_last_group():
    codes = torch.randint(0, 16, (4, 10))
    scale, zero = torch.rand(4, 3) + 0.1, torch.randint(0, 16, (4, 3)).float()
    w = QuantizedWeight((4, 10), [QuantizedSegment(4, codes, 4, scale, zero)]).dequantize()
    for r in range(4):
        for c in range(10):
            assert w[r, c].item() == pytest.approx((scale[r, c // 4] * (codes[r, c] - zero[r, c // 4])).item())


def test_mixed_widths_with_permutation():
    out, parts = 3, [(2, 5, 3), (4, 4, 4), (8, 3, 2)]  # (bits, n_cols, group_size)
    perm = torch.randperm(12)
    segs = []
    for bits, n, g in parts:
        ng = math.ceil(n / g)
        segs.append(
            QuantizedSegment(bits, torch.randint(0, 2**bits, (out, n)), g, torch.rand(out, ng), torch.rand(out, ng))
        )
    qw = QuantizedWeight((out, 12), segs, perm)
    ref = torch.zeros(out, 12)
    j = 0
    for seg in segs:
        for c in range(seg.n_cols):
            g = c // seg.group_size
            ref[:, perm[j]] = seg.scale[:, g] * (seg.codes[:, c] - seg.zero[:, g])
            j += 1
    assert torch.allclose(qw.dequantize(), ref, rtol=0, atol=1e-6)
    assert qw.nominal_bits == pytest.approx((2 * 5 + 4 * 4 + 8 * 3) / 12)


def test_group_size_beyond_the_segment_means_one_group():
    codes = torch.randint(0, 4, (2, 3))
    scale, zero = torch.rand(2, 1), torch.rand(2, 1)
    w = QuantizedWeight((2, 3), [QuantizedSegment(2, codes, 128, scale, zero)]).dequantize()
    assert torch.allclose(w, scale * (codes - zero), rtol=0, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 3])
def test_codebook_segments(rows):
    seg = random_codebook_segment(3, 7, 2, 3, rows)
    w = QuantizedWeight((3, 7), [seg]).dequantize()
    for r in range(3):
        for c in range(7):
            assert w[r, c] == seg.codebook[r if rows > 1 else 0, c // 3, seg.codes[r, c]]


def test_conv_weight_is_flattened_in_pytorch_order():
    weight = torch.randn(4, 2, 3, 3)
    qw = rtn_weight(weight, [(8, 18, 18)])
    assert qw.in_features == 18 and qw.dequantize().shape == (4, 2, 3, 3)
    assert torch.allclose(qw.dequantize(), weight, atol=0.02)


def _seg(**kw):
    args = {"bits": 2, "codes": torch.zeros(2, 4, dtype=torch.int64), "group_size": 2}
    return {**args, **kw}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (_seg(), "exactly one grid"),
        (_seg(scale=torch.ones(2, 2)), "exactly one grid"),
        (_seg(scale=torch.ones(2, 2), zero=torch.ones(2, 2), codebook=torch.ones(1, 2, 4)), "exactly one grid"),
        (_seg(scale=torch.ones(2, 1), zero=torch.ones(2, 1)), r"scale: expected .*\(2, 2\)"),
        (_seg(codebook=torch.ones(2, 2, 3)), "codebook: expected"),
        (_seg(bits=9, codebook=torch.ones(1, 2, 4)), "bits=9"),
        (_seg(codes=torch.full((2, 4), 4), codebook=torch.ones(1, 2, 4)), "codes must lie"),
        (_seg(codes=torch.zeros(2, 4), codebook=torch.ones(1, 2, 4)), "integer tensor"),
        (_seg(group_size=0, codebook=torch.ones(1, 2, 4)), "group_size=0"),
    ],
)
def test_segment_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantizedSegment(**kwargs)


def test_weight_validation():
    seg = QuantizedSegment(2, torch.zeros(2, 4, dtype=torch.int64), 4, codebook=torch.ones(1, 1, 4))
    with pytest.raises(ValueError, match="cover 4 columns"):
        QuantizedWeight((2, 5), [seg])
    with pytest.raises(ValueError, match="has 2 rows"):
        QuantizedWeight((3, 4), [seg])
    with pytest.raises(ValueError, match="not a permutation"):
        QuantizedWeight((2, 4), [seg], torch.tensor([0, 1, 1, 3]))
    with pytest.raises(ValueError, match=r"perm: expected .*\(4,\)"):
        QuantizedWeight((2, 4), [seg], torch.arange(3))


# ---------------------------------------------------------------- packed layers


def configs(weight: torch.Tensor) -> list[QuantizedWeight]:
    out, n = weight.shape[0], weight[0].numel()
    perm = torch.randperm(n)
    cb = random_codebook_segment(out, n - n // 2, 3, 5, out)
    mixed = rtn_segments(weight, [(3, n // 2, 4)], perm)
    return [
        rtn_weight(weight, [(4, n, n)]),  # per channel
        rtn_weight(weight, [(5, n, 7)]),  # grouped, partial last group
        rtn_weight(weight, [(2, n // 3, 4), (6, n - n // 3, 16)], perm),  # BAQ-like mixed widths
        QuantizedWeight(tuple(weight.shape), [*mixed, cb], perm),  # uniform + codebook
    ]


@pytest.mark.parametrize("index", range(4))
def test_quant_linear_matches_dequantized_weight(index):
    lin = nn.Linear(37, 6)
    qw = configs(lin.weight)[index]
    q = QuantLinear.from_float(lin, qw)
    for s, seg in enumerate(qw.segments):  # codes are exact
        assert torch.equal(
            unpack_bits(getattr(q, f"qweight_{s}"), seg.bits, seg.codes.numel()), seg.codes.view(-1).byte()
        )
    assert torch.equal(q.dequantized_weight(), half_grids(qw).dequantize())  # exact once grids are fp16
    tol = grid_tolerance(qw)
    assert torch.allclose(q.dequantized_weight(), qw.dequantize(), rtol=0, atol=tol)
    x = torch.randn(5, 37)
    ref = F.linear(x, qw.dequantize(), lin.bias)
    assert torch.allclose(q(x), ref, rtol=0, atol=tol * x.abs().sum(1).max().item() + 1e-5)
    assert torch.equal(q.bias, lin.bias)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
        nn.Conv2d(3, 5, (3, 2), padding="same", dilation=2, bias=False),
        nn.Conv2d(3, 4, 3, padding=(2, 1), padding_mode="reflect"),
    ],
)
def test_quant_conv2d_keeps_geometry(conv):
    qw = configs(conv.weight)[2]
    q = QuantConv2d.from_float(conv, qw)
    x = torch.randn(2, conv.in_channels, 9, 8)
    with torch.no_grad():
        conv.weight.copy_(half_grids(qw).dequantize())
        assert torch.equal(q(x), conv(x))
    assert (q.in_channels, q.out_channels, q.kernel_size) == (conv.in_channels, conv.out_channels, conv.kernel_size)


class StaticSamePadConv(nn.Conv2d):
    """What EfficientNet's Conv2dStaticSamePadding does: pad, then convolve."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding, self.dilation)


def test_static_same_padding_is_kept_and_custom_forwards_are_refused():
    conv = StaticSamePadConv(3, 4, 3, stride=2)
    qw = configs(conv.weight)[0]
    q = QuantConv2d.from_float(conv, qw)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        conv.weight.copy_(half_grids(qw).dequantize())
        assert torch.equal(q(x), conv(x))

    class Odd(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(TypeError, match=r"overrides nn\.Linear\.forward"):
        QuantLinear.from_float(Odd(4, 2), configs(torch.randn(2, 4))[0])


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_spec_round_trip_reproduces_module_exactly(kind):
    float_mod = nn.Linear(40, 3) if kind == "linear" else nn.Conv2d(4, 6, 3, padding=1, groups=2)
    cls = QuantLinear if kind == "linear" else QuantConv2d
    q = cls.from_float(float_mod, configs(float_mod.weight)[3])
    spec = json.loads(json.dumps(q.spec()))
    empty = cls.from_spec(spec)
    assert set(empty.state_dict()) == set(q.state_dict())
    empty.load_state_dict(q.state_dict(), strict=True)
    x = torch.randn(2, 40) if kind == "linear" else torch.randn(2, 4, 5, 5)
    assert torch.equal(empty(x), q(x))
    sd = q.state_dict()
    assert sd["qweight_0"].dtype == torch.uint8 and sd["scale_0"].dtype == torch.float16
    assert sd["codebook_1"].dtype == torch.float16 and sd["perm"].dtype == torch.int16
    assert sd["bias"].dtype == torch.float32
    assert "perm" not in cls.from_float(float_mod, configs(float_mod.weight)[0]).state_dict()
    with pytest.raises(ValueError, match="malformed spec"):
        cls.from_spec({k: v for k, v in spec.items() if k != "segments"})


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_a_segment_sorted_permutation_is_stored_as_a_segment_map(kind):
    # columns of each width class kept in ascending order: the permutation is implied by each column's class
    torch.manual_seed(3)
    float_mod = nn.Linear(40, 6) if kind == "linear" else nn.Conv2d(8, 6, (1, 5))
    cls = QuantLinear if kind == "linear" else QuantConv2d
    seg_of = torch.randint(0, 3, (40,))
    perm = torch.argsort(seg_of, stable=True)
    parts = [(4, int((seg_of == 0).sum()), 8), (3, int((seg_of == 1).sum()), 40), (2, int((seg_of == 2).sum()), 8)]
    qw = rtn_weight(float_mod.weight, parts, perm)
    q = cls.from_float(float_mod, qw)
    assert q.spec()["perm"] == "segments" and q.perm is None
    assert q.quant_tensor_names()[-1] == "segmap" and "perm" not in q.state_dict()
    assert q.segmap.dtype == torch.uint8 and q.segmap.numel() == 10  # 40 columns × 2 bits, not 40 × 16
    assert torch.equal(q.column_perm(), perm)
    assert torch.equal(q.dequantized_weight(), qw.with_stored_grids().dequantize())
    empty = cls.from_spec(json.loads(json.dumps(q.spec())))
    empty.load_state_dict(q.state_dict(), strict=True)
    assert torch.equal(empty.dequantized_weight(), q.dequantized_weight())
    # two columns of one class out of ascending order: the map cannot say so, the indices are stored
    members = torch.nonzero(seg_of[perm] == 0).flatten()
    swapped = perm.clone()
    swapped[members[0]], swapped[members[1]] = perm[members[1]], perm[members[0]]
    full = cls.from_float(float_mod, rtn_weight(float_mod.weight, parts, swapped))
    assert full.spec()["perm"] is True and full.perm.dtype == torch.int16 and "segmap" not in full.state_dict()
    assert torch.equal(full.column_perm(), swapped)
    with pytest.raises(ValueError, match="perm='sorted': expected false, true or 'segments'"):
        cls.from_spec({**q.spec(), "perm": "sorted"})


def test_wide_layers_store_perm_as_int32():
    assert perm_dtype(32767) == torch.int16 and perm_dtype(32768) == torch.int32
    lin = nn.Linear(32768, 1)
    q = QuantLinear.from_float(lin, rtn_weight(lin.weight, [(2, 32768, 1024)], torch.randperm(32768)))
    assert q.perm.dtype == torch.int32


def test_forward_follows_input_dtype_and_grids_stay_fp16():
    lin = nn.Linear(16, 4)
    q = QuantLinear.from_float(lin, configs(lin.weight)[1])
    assert q(torch.randn(2, 16, dtype=torch.float64)).dtype == torch.float64
    assert q(torch.randn(2, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16
    w = q.dequantized_weight()
    q.double()
    assert q.scale_0.dtype == torch.float16 and q.bias.dtype == torch.float64
    assert torch.equal(q.dequantized_weight(), w)


def test_cache_dequantized_is_optional_and_reset_on_load():
    lin = nn.Linear(16, 4)
    q = QuantLinear.from_float(lin, configs(lin.weight)[0])
    x = torch.randn(3, 16)
    y = q(x)
    assert q._cached is None
    set_dequant_cache(nn.Sequential(q))
    assert q.cache_dequantized and torch.equal(q(x), y) and q._cached is not None
    lin2 = nn.Linear(16, 4)
    other = QuantLinear.from_float(lin2, configs(lin2.weight)[0])  # same layout, other values
    q.load_state_dict(other.state_dict())
    assert q._cached is None and torch.equal(q(x), other(x))


def test_quantize_module_inplace():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Sequential(nn.Conv2d(1, 2, 3)))
    x = torch.randn(1, 8)
    new = quantize_module_inplace(model, "0", rtn_weight(model[0].weight, [(8, 8, 8)]))
    assert model[0] is new and isinstance(new, QuantLinear)
    assert torch.allclose(model[1](new(x)), model[1](F.linear(x, new.dequantized_weight(), new.bias)))
    conv = quantize_module_inplace(model, "2.0", rtn_weight(model[2][0].weight, [(4, 9, 9)]))
    assert isinstance(model[2][0], QuantConv2d) and conv is model[2][0]
    with pytest.raises(TypeError, match=r"only nn\.Linear, nn\.Conv2d and nn\.Embedding"):
        quantize_module_inplace(model, "1", rtn_weight(torch.randn(2, 2), [(4, 2, 2)]))
    with pytest.raises(ValueError, match="no such submodule"):
        quantize_module_inplace(model, "5", rtn_weight(torch.randn(2, 2), [(4, 2, 2)]))
    with pytest.raises(ValueError, match="does not fit"):
        QuantLinear.from_float(nn.Linear(3, 2), rtn_weight(torch.randn(2, 4), [(4, 4, 4)]))
