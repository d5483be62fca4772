"""The solver-facing description of one quantized weight matrix: codes, grids and a column permutation.

A weight W of shape (out, in) — a Conv2d weight (out, in/groups, kh, kw) is flattened to (out, in/groups·kh·kw)
in PyTorch's order — is stored as

    W[:, perm] = concat(segment_0, segment_1, ...)      # (out, in), columns in permuted order

where each `QuantizedSegment` is a contiguous block of permuted columns sharing one bit-width, split into
groups of `group_size` columns (the last group may be partial), each group with either

    uniform affine grid:  w = scale[r, g] · (code − zero[r, g])          (zero in code units)
    codebook:             w = codebook[r or 0, g, code]                 (non-uniform levels)

This one format covers uniform widths per tensor / channel / group, BAQ's mixed widths by input column (columns
permuted into width classes, one segment per width), act-order GPTQ (perm = the act-order permutation) and
codebook quantizers (Lloyd–Max, quantile, log).

>>> codes = torch.tensor([[0, 1, 2, 3]])
>>> seg = QuantizedSegment(2, codes, group_size=4, scale=torch.tensor([[0.5]]), zero=torch.tensor([[1.5]]))
>>> QuantizedWeight((1, 4), [seg]).dequantize()
tensor([[-0.7500, -0.2500,  0.2500,  0.7500]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "QuantizedSegment",
    "QuantizedWeight",
    "dequantize_segment",
    "perm_from_segment_map",
    "segment_map",
    "unpermute_columns",
]


def _is_int(t: Tensor) -> bool:
    return not (t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex)


def _is_float(t: object) -> bool:
    return isinstance(t, Tensor) and t.dtype.is_floating_point


def dequantize_segment(
    codes: Tensor,
    group_size: int,
    scale: Tensor | None = None,
    zero: Tensor | None = None,
    codebook: Tensor | None = None,
) -> Tensor:
    """Float32 weights (out, n_cols) of one segment; grids are read in float32 whatever their storage dtype.

    codes: (out, n_cols) integers; scale, zero: (out, n_groups); codebook: (1 or out, n_groups, 2**bits).
    """
    out, n_cols = codes.shape
    if codebook is None:
        g = min(group_size, n_cols)
        n_groups = -(-n_cols // g)
        full = n_groups * g  # > n_cols when the last group is partial: pad, then cut
        padded = codes if full == n_cols else torch.cat([codes, codes.new_zeros(out, full - n_cols)], dim=1)
        w = padded.reshape(out, n_groups, g).to(torch.float32, copy=True)  # a new tensor: in-place is safe
        w.sub_(zero.float().unsqueeze(2)).mul_(scale.float().unsqueeze(2))  # (code − zero) · scale per group
        return w.view(out, full)[:, :n_cols]
    rows, n_groups, levels = codebook.shape
    group = torch.arange(n_cols, device=codes.device) // group_size  # (n_cols,)
    index = group * levels + codes.long()  # (out, n_cols) into the flattened (n_groups·levels) table
    table = codebook.float().reshape(rows, n_groups * levels).expand(out, -1)  # stride 0 when rows == 1
    return torch.gather(table, 1, index)


def unpermute_columns(w: Tensor, perm: Tensor | None) -> Tensor:
    """W with W[:, perm] = w: undo the column permutation (perm None = identity)."""
    if perm is None:
        return w
    out = torch.empty_like(w)
    out[:, perm.long()] = w
    return out


def segment_map(perm: Tensor, n_cols: list[int]) -> Tensor | None:
    """The segment of every original column, (in,) int64, when `perm` is the one it implies — the columns of
    each segment in ascending original order — else None. Such a permutation is stored as this map, ⌈log2 S⌉
    bits per column for S segments, instead of a 16-bit index per column (`perm_from_segment_map` inverts it)."""
    perm = perm.long()
    stored = torch.repeat_interleave(torch.arange(len(n_cols), device=perm.device), torch.tensor(n_cols))
    seg_of = torch.empty_like(stored)
    seg_of[perm] = stored
    return seg_of if torch.equal(perm_from_segment_map(seg_of), perm) else None


def perm_from_segment_map(seg_of: Tensor) -> Tensor:
    """The permutation (in,) int64 that lists segment 0's columns in ascending order, then segment 1's, ..."""
    return torch.argsort(seg_of.long(), stable=True)


@dataclass
class QuantizedSegment:
    """A contiguous block of (permuted) input columns sharing one bit-width.

    bits: code width, 1..8.
    codes: (out, n_cols) integers in [0, 2**bits).
    group_size: columns per group inside this segment (n_cols for per-channel); the last group may be partial.
    scale, zero: (out, n_groups) — uniform affine grid, w = scale · (code − zero), zero in code units.
    codebook: (1 or out, n_groups, 2**bits) — non-uniform levels, w = codebook[row or 0, group, code].
    Exactly one of (scale and zero) or codebook is given.
    """

    bits: int
    codes: Tensor
    group_size: int
    scale: Tensor | None = None
    zero: Tensor | None = None
    codebook: Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ValueError(f"bits={self.bits!r}: must be an integer in 1..8")
        c = self.codes
        if not isinstance(c, Tensor) or c.dim() != 2 or not _is_int(c) or c.shape[1] == 0:
            what = f"{c.dtype} tensor of shape {tuple(c.shape)}" if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"codes: expected a 2-D integer tensor (out, n_cols ≥ 1), got {what}")
        if c.numel():
            lo, hi = torch.aminmax(c)
            if int(lo) < 0 or int(hi) >= 1 << self.bits:
                n = 1 << self.bits
                raise ValueError(
                    f"codes must lie in [0, {n}) for bits={self.bits}; got values in [{int(lo)}, {int(hi)}]"
                )
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size={self.group_size!r}: must be a positive integer")
        uniform = self.scale is not None or self.zero is not None
        if uniform == (self.codebook is not None) or (self.scale is None) != (self.zero is None):
            raise ValueError("give exactly one grid: scale and zero (uniform) or codebook (non-uniform)")
        out, ng = self.out_features, self.n_groups
        if uniform:
            for name in ("scale", "zero"):
                t = getattr(self, name)
                if not _is_float(t) or tuple(t.shape) != (out, ng):
                    got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else repr(t)
                    raise ValueError(f"{name}: expected a float tensor of shape (out, n_groups)={(out, ng)}, got {got}")
        else:
            t = self.codebook
            ok = _is_float(t) and t.dim() == 3 and t.shape[0] in (1, out) and tuple(t.shape[1:]) == (ng, 1 << self.bits)
            if not ok:
                got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else repr(t)
                levels = 1 << self.bits
                raise ValueError(
                    f"codebook: expected a float tensor of shape (1 or {out}, n_groups={ng}, 2**bits={levels}), "
                    f"got {got}"
                )

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def n_cols(self) -> int:
        return self.codes.shape[1]

    @property
    def n_groups(self) -> int:
        return math.ceil(self.n_cols / self.group_size)

    @property
    def is_codebook(self) -> bool:
        return self.codebook is not None

    def dequantize(self) -> Tensor:
        """Float32 weights (out, n_cols) of this segment."""
        return dequantize_segment(self.codes, self.group_size, self.scale, self.zero, self.codebook)


@dataclass
class QuantizedWeight:
    """One quantized weight matrix: segments of permuted columns, and the permutation.

    shape: the original weight shape, (out, in) or (out, in/groups, kh, kw).
    segments: their n_cols add up to in_features = prod(shape[1:]).
    perm: (in_features,) int64; column j of the concatenated segments is original column perm[j]; None = identity.
    """

    shape: tuple[int, ...]
    segments: list[QuantizedSegment]
    perm: Tensor | None = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) < 2 or min(self.shape) < 1:
            raise ValueError(f"shape={self.shape}: expected (out, in, ...) with positive sizes")
        self.segments = list(self.segments)
        if not self.segments or not all(isinstance(s, QuantizedSegment) for s in self.segments):
            raise ValueError("segments: expected a non-empty list of QuantizedSegment")
        for i, seg in enumerate(self.segments):
            if seg.out_features != self.out_features:
                raise ValueError(f"segments[{i}].codes has {seg.out_features} rows; the weight has {self.out_features}")
        widths = [seg.n_cols for seg in self.segments]
        if sum(widths) != self.in_features:
            raise ValueError(f"segments cover {sum(widths)} columns ({widths}); the weight has {self.in_features}")
        if self.perm is not None:
            p = self.perm
            if not isinstance(p, Tensor) or not _is_int(p) or tuple(p.shape) != (self.in_features,):
                got = f"{p.dtype} {tuple(p.shape)}" if isinstance(p, Tensor) else repr(p)
                raise ValueError(f"perm: expected an integer tensor of shape ({self.in_features},), got {got}")
            p = p.long()
            if not torch.equal(torch.sort(p).values, torch.arange(self.in_features, device=p.device)):
                raise ValueError(f"perm is not a permutation of 0..{self.in_features - 1}")
            self.perm = p

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        """Columns of the flattened (out, in) matrix: prod(shape[1:])."""
        return math.prod(self.shape[1:])

    @property
    def n_weights(self) -> int:
        return math.prod(self.shape)

    @property
    def nominal_bits(self) -> float:
        """Mean code width over the weights (scales, zeros, codebooks and perm not counted)."""
        return sum(seg.bits * seg.n_cols for seg in self.segments) / self.in_features

    def with_stored_grids(self) -> QuantizedWeight:
        """The same codes with every grid rounded to float16, as the packed modules store them, so that the
        dequantized weight equals the saved model's exactly (calibration of later layers then sees it too)."""

        def r(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(torch.float16).to(t.dtype)

        segs = [
            QuantizedSegment(s.bits, s.codes, s.group_size, r(s.scale), r(s.zero), r(s.codebook)) for s in self.segments
        ]
        return QuantizedWeight(self.shape, segs, self.perm)

    def dequantize(self) -> Tensor:
        """Float32 weight of `shape`."""
        parts = [seg.dequantize() for seg in self.segments]
        w = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (out, in), permuted columns
        return unpermute_columns(w, self.perm).reshape(self.shape)
