"""Packed quantized layers: `QuantLinear` and `QuantConv2d`.

Storage (registered buffers, all in the state dict), per segment s of the `QuantizedWeight`:
    qweight_{s}  uint8   (⌈out·n_cols·bits/8⌉,)   codes packed row-major by `pack_bits`
    scale_{s}    float16 (out, n_groups)           uniform grid, with
    zero_{s}     float16 (out, n_groups)           (in code units)
    codebook_{s} float16 (1 or out, n_groups, 2**bits)   instead of scale/zero for a codebook segment
and, only when the column permutation is not the identity, either
    segmap       uint8   (⌈in·m/8⌉,)   each column's segment, m = ⌈log2 S⌉ bits (≥ 1) for S segments, packed
when the permutation is the one the map implies (each segment's columns in ascending original order:
spec "perm" = "segments"), or else
    perm         int16 (int32 when in ≥ 32768) (in,)   the permutation itself (spec "perm" = true),
plus the float32 `bias` parameter. Bits, group sizes and shapes live in the JSON `spec()`, so `from_spec(spec)` builds
an empty module whose state dict then loads.

The forward pass dequantizes on the fly (nothing cached unless `cache_dequantized = True`) and calls
F.linear / F.conv2d in the input's dtype. Because scale/zero/codebook are stored in float16, the weight
differs from `QuantizedWeight.dequantize()` (float32 grids) by the float16 rounding of the grid (relative
≈ 2⁻¹¹); it equals exactly the dequantization of the same codes with float16-rounded grids.

>>> from bayesquant.nn import QuantizedSegment, QuantizedWeight, quantize_module_inplace
>>> lin = nn.Linear(8, 2)
>>> seg = QuantizedSegment(4, torch.randint(0, 16, (2, 8)), 8, torch.full((2, 1), 0.1), torch.full((2, 1), 8.0))
>>> q = quantize_module_inplace(nn.Sequential(lin), "0", QuantizedWeight((2, 8), [seg]))
>>> q.spec()["segments"]
[{'bits': 4, 'n_cols': 8, 'group_size': 8, 'codebook_rows': 0}]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesquant.nn.packing import pack_bits, packed_nbytes, unpack_bits
from bayesquant.nn.patches import static_padding
from bayesquant.nn.qweight import (
    QuantizedWeight,
    dequantize_segment,
    perm_from_segment_map,
    segment_map,
    unpermute_columns,
)

__all__ = [
    "QuantConv2d",
    "QuantEmbedding",
    "QuantLinear",
    "QuantModule",
    "QuantTiedLinear",
    "SegmentLayout",
    "module_from_spec",
    "module_specs",
    "perm_storage",
    "quant_tensor_names",
    "quantize_module_inplace",
    "quantized_modules",
    "set_dequant_cache",
    "set_submodule",
]


@dataclass(frozen=True)
class SegmentLayout:
    """The integer metadata of one stored segment; codebook_rows = 0 means a uniform (scale, zero) grid."""

    bits: int
    n_cols: int
    group_size: int
    codebook_rows: int = 0

    def __post_init__(self) -> None:
        for name in ("bits", "n_cols", "group_size", "codebook_rows"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise ValueError(f"segment {name}={getattr(self, name)!r}: expected an integer")
        if not 1 <= self.bits <= 8 or self.n_cols < 1 or self.group_size < 1 or self.codebook_rows < 0:
            raise ValueError(f"invalid segment layout {asdict(self)}")

    @property
    def n_groups(self) -> int:
        return math.ceil(self.n_cols / self.group_size)


_GRIDS = frozenset({"scale", "zero", "codebook"})


def perm_dtype(n: int) -> torch.dtype:
    """Smallest signed integer type that holds column indices 0..n-1."""
    return torch.int16 if n < 2**15 else torch.int32


SEGMENTS = "segments"  # spec["perm"] of a permutation stored as a per-column segment map


def segment_map_bits(n_segments: int) -> int:
    """Bits per column of a segment map: ⌈log2 S⌉, at least 1."""
    return max(1, math.ceil(math.log2(n_segments)))


def perm_storage(qw: QuantizedWeight) -> bool | str:
    """How `qw`'s permutation is stored: False (none), "segments" (a segment map) or True (int16/int32 indices)."""
    if qw.perm is None:
        return False
    if len(qw.segments) <= 256 and segment_map(qw.perm, [seg.n_cols for seg in qw.segments]) is not None:
        return SEGMENTS
    return True


def _perm_kind(value: Any) -> bool | str:
    if value is False or value is True or value == SEGMENTS:
        return value
    raise ValueError(f"perm={value!r}: expected false, true or {SEGMENTS!r}")


def quant_tensor_names(spec: dict) -> list[str]:
    """Names (relative to the module) of the stored quantized tensors of a spec: codes, grids, perm; not bias."""
    names = []
    for s, seg in enumerate(spec["segments"]):
        grids = ("codebook",) if seg.get("codebook_rows", 0) else ("scale", "zero")
        names += [f"qweight_{s}", *(f"{g}_{s}" for g in grids)]
    kind = _perm_kind(spec.get("perm", False))
    return [*names, "segmap" if kind == SEGMENTS else "perm"] if kind else names


class QuantModule(nn.Module):
    """Storage, dequantization and spec shared by `QuantLinear`, `QuantConv2d` and `QuantEmbedding`."""

    float_type: ClassVar[type[nn.Module]] = nn.Module

    def __init__(
        self,
        shape: Sequence[int],
        layouts: Sequence[SegmentLayout],
        has_perm: bool | str,
        has_bias: bool,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.weight_shape = tuple(int(s) for s in shape)
        self.layouts = tuple(layouts)
        out, cols = self.weight_shape[0], math.prod(self.weight_shape[1:])
        if sum(lay.n_cols for lay in self.layouts) != cols or not self.layouts:
            raise ValueError(f"segments cover {[lay.n_cols for lay in self.layouts]} columns; the weight has {cols}")
        for s, lay in enumerate(self.layouts):
            nbytes = packed_nbytes(out * lay.n_cols, lay.bits)
            self.register_buffer(f"qweight_{s}", torch.zeros(nbytes, dtype=torch.uint8, device=device))
            if lay.codebook_rows:
                if lay.codebook_rows not in (1, out):
                    raise ValueError(f"codebook_rows={lay.codebook_rows}: must be 1 or out={out}")
                cb = torch.zeros(lay.codebook_rows, lay.n_groups, 1 << lay.bits, dtype=torch.float16, device=device)
                self.register_buffer(f"codebook_{s}", cb)
            else:
                for g in ("scale", "zero"):
                    grid = torch.zeros(out, lay.n_groups, dtype=torch.float16, device=device)
                    self.register_buffer(f"{g}_{s}", grid)
        self.perm_kind = _perm_kind(has_perm)
        if self.perm_kind == SEGMENTS:
            nbytes = packed_nbytes(cols, segment_map_bits(len(self.layouts)))
            self.register_buffer("segmap", torch.zeros(nbytes, dtype=torch.uint8, device=device))
            self.register_buffer("perm", None)
        else:
            perm = torch.arange(cols, dtype=perm_dtype(cols), device=device) if self.perm_kind else None
            self.register_buffer("perm", perm)
        self.register_parameter("bias", nn.Parameter(torch.zeros(out, device=device)) if has_bias else None)
        self.cache_dequantized = False  # set True to keep the dequantized weight between calls
        self._cached: Tensor | None = None

    # ------------------------------------------------------------------ building

    def _fill(self, qw: QuantizedWeight, bias: Tensor | None) -> None:
        """Copy codes (packed, exact), grids (float16), perm and bias from `qw` into the buffers."""
        with torch.no_grad():
            for s, seg in enumerate(qw.segments):
                getattr(self, f"qweight_{s}").copy_(pack_bits(seg.codes, seg.bits))
                grids = {"codebook": seg.codebook} if seg.is_codebook else {"scale": seg.scale, "zero": seg.zero}
                for g, value in grids.items():
                    half = value.detach().to(torch.float16)
                    if not torch.isfinite(half).all():  # |x| > 65504; tiny scales (< 6e-8) flush harmlessly to 0
                        raise ValueError(f"segment {s} {g}: values overflow float16 storage (|x| > 65504)")
                    getattr(self, f"{g}_{s}").copy_(half)
            if self.perm_kind == SEGMENTS:
                seg_of = segment_map(qw.perm, [seg.n_cols for seg in qw.segments])
                self.segmap.copy_(pack_bits(seg_of, segment_map_bits(len(self.layouts))))
            elif self.perm_kind:
                self.perm.copy_(qw.perm)
            if bias is not None:
                self.bias.copy_(bias.detach().float())

    @staticmethod
    def _layouts(qw: QuantizedWeight) -> list[SegmentLayout]:
        return [
            SegmentLayout(seg.bits, seg.n_cols, seg.group_size, seg.codebook.shape[0] if seg.is_codebook else 0)
            for seg in qw.segments
        ]

    @classmethod
    def _check_float(cls, module: nn.Module, qw: QuantizedWeight) -> None:
        if not isinstance(module, cls.float_type):
            raise TypeError(f"{cls.__name__}.from_float: expected an nn.{cls.float_type.__name__}, got {module}")
        if not isinstance(qw, QuantizedWeight):
            raise TypeError(f"{cls.__name__}.from_float: qw must be a QuantizedWeight, got {type(qw).__name__}")
        if tuple(module.weight.shape) != qw.shape:
            shape = tuple(module.weight.shape)
            raise ValueError(f"QuantizedWeight of shape {qw.shape} does not fit the module's weight {shape}")

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable metadata from which `from_spec` rebuilds this module (empty)."""
        return {
            "type": type(self).__name__,
            "shape": list(self.weight_shape),
            "segments": [asdict(lay) for lay in self.layouts],
            "perm": self.perm_kind,
            "bias": self.bias is not None,
            **self._extra_spec(),
        }

    def _extra_spec(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _extra_from_spec(cls, spec: dict) -> dict[str, Any]:
        return {}

    @classmethod
    def from_spec(cls, spec: dict, device: torch.device | str | None = None) -> QuantModule:
        """An empty module (zeros) laid out as `spec`; load its state dict next. Bad specs raise ValueError."""
        kind = spec.get("type") if isinstance(spec, dict) else type(spec).__name__
        if kind != cls.__name__:
            raise ValueError(f"{cls.__name__}.from_spec: spec of type {kind!r}, expected {cls.__name__!r}")
        try:
            layouts = [SegmentLayout(**seg) for seg in spec["segments"]]
            extra = cls._extra_from_spec(spec)
            return cls(spec["shape"], layouts, spec["perm"], bool(spec["bias"]), **extra, device=device)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{cls.__name__}.from_spec: malformed spec ({type(exc).__name__}: {exc})") from None

    def quant_tensor_names(self) -> list[str]:
        """Buffers that hold the quantized weight (codes, grids, perm or segmap), i.e. everything but the bias."""
        return quant_tensor_names(self.spec())

    # ------------------------------------------------------------------ using

    @property
    def n_weights(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def nominal_bits(self) -> float:
        return sum(lay.bits * lay.n_cols for lay in self.layouts) / math.prod(self.weight_shape[1:])

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The weight (`weight_shape`) from the stored codes and float16 grids, computed in float32, cast to dtype."""
        out = self.weight_shape[0]
        parts = []
        for s, lay in enumerate(self.layouts):
            codes = unpack_bits(getattr(self, f"qweight_{s}"), lay.bits, out * lay.n_cols).view(out, lay.n_cols)
            if lay.codebook_rows:
                parts.append(dequantize_segment(codes, lay.group_size, codebook=getattr(self, f"codebook_{s}")))
            else:
                scale, zero = getattr(self, f"scale_{s}"), getattr(self, f"zero_{s}")
                parts.append(dequantize_segment(codes, lay.group_size, scale, zero))
        w = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (out, in), permuted columns
        w = unpermute_columns(w, self.column_perm()).reshape(self.weight_shape)
        return w if dtype is None else w.to(dtype)

    def column_perm(self) -> Tensor | None:
        """The stored column permutation (None = identity), read from `perm` or rebuilt from `segmap`."""
        if self.perm_kind != SEGMENTS:
            return self.perm
        cols = math.prod(self.weight_shape[1:])
        return perm_from_segment_map(unpack_bits(self.segmap, segment_map_bits(len(self.layouts)), cols))

    def _weight(self, dtype: torch.dtype) -> Tensor:
        if not self.cache_dequantized:
            return self.dequantized_weight(dtype)
        if self._cached is None or self._cached.dtype != dtype:
            self._cached = self.dequantized_weight(dtype)
        return self._cached

    def _bias(self, dtype: torch.dtype) -> Tensor | None:
        return None if self.bias is None else self.bias.to(dtype)

    def _apply(self, fn, recurse=True):  # nn.Module's signature
        # Grids stay float16 whatever `.to(dtype)` / `.double()` asks: only their device follows.
        self._cached = None
        grids = {k: v for k, v in self._buffers.items() if v is not None and k.split("_")[0] in _GRIDS}
        super()._apply(fn, recurse)
        for k, v in grids.items():
            self._buffers[k] = v.to(device=self._buffers[k].device)
        return self

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cached = None
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        widths = "+".join(f"{lay.n_cols}×{lay.bits}b/g{lay.group_size}" for lay in self.layouts)
        flags = f"perm={self.perm_kind}, bias={self.bias is not None}"
        return f"shape={self.weight_shape}, segments={widths}, {flags}"


class QuantLinear(QuantModule):
    """nn.Linear with a packed quantized weight (out, in)."""

    float_type = nn.Linear

    def __init__(
        self,
        shape: Sequence[int],
        layouts: Sequence[SegmentLayout],
        has_perm: bool | str,
        has_bias: bool,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(shape, layouts, has_perm, has_bias, device)
        if len(self.weight_shape) != 2:
            raise ValueError(f"QuantLinear: shape={self.weight_shape} must be (out, in)")
        self.out_features, self.in_features = self.weight_shape

    @classmethod
    def from_float(cls, linear: nn.Linear, qw: QuantizedWeight) -> QuantLinear:
        """Pack `qw` (the quantized `linear.weight`) with `linear`'s bias, on `linear`'s device."""
        cls._check_float(linear, qw)
        if type(linear).forward is not nn.Linear.forward:
            raise TypeError(f"{type(linear).__name__} overrides nn.Linear.forward; QuantLinear cannot replace it")
        m = cls(qw.shape, cls._layouts(qw), perm_storage(qw), linear.bias is not None, linear.weight.device)
        m._fill(qw, linear.bias)
        return m.train(linear.training)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self._weight(x.dtype), self._bias(x.dtype))


def _ints(v: Any) -> Any:
    return v if isinstance(v, str) else [int(i) for i in v]


class QuantConv2d(QuantModule):
    """nn.Conv2d with a packed quantized weight (out, in/groups, kh, kw), stored flattened (out, in/groups·kh·kw).

    Non-zero padding modes and the static "same" padding of EfficientNet's Conv2dStaticSamePadding become an
    explicit `input_pad` (F.pad arguments) applied before the convolution.
    """

    float_type = nn.Conv2d

    def __init__(
        self,
        shape: Sequence[int],
        layouts: Sequence[SegmentLayout],
        has_perm: bool | str,
        has_bias: bool,
        stride: Sequence[int] = (1, 1),
        padding: Sequence[int] | str = (0, 0),
        dilation: Sequence[int] = (1, 1),
        groups: int = 1,
        input_pad: Sequence[int] | None = None,
        input_pad_mode: str = "constant",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(shape, layouts, has_perm, has_bias, device)
        if len(self.weight_shape) != 4:
            raise ValueError(f"QuantConv2d: shape={self.weight_shape} must be (out, in/groups, kh, kw)")
        self.stride, self.dilation = tuple(int(i) for i in stride), tuple(int(i) for i in dilation)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self.groups = int(groups)
        self.input_pad = None if input_pad is None else tuple(int(p) for p in input_pad)
        self.input_pad_mode = input_pad_mode
        self.out_channels = self.weight_shape[0]
        self.in_channels = self.weight_shape[1] * self.groups
        self.kernel_size = self.weight_shape[2:]

    @classmethod
    def from_float(cls, conv: nn.Conv2d, qw: QuantizedWeight) -> QuantConv2d:
        """Pack `qw` (the quantized `conv.weight`), keeping stride/padding/dilation/groups and the bias."""
        cls._check_float(conv, qw)
        input_pad, mode, padding = static_padding(conv), "constant", conv.padding  # EfficientNet's static "same"
        if conv.padding_mode != "zeros":
            if input_pad is not None:
                raise TypeError(f"{type(conv).__name__}: static padding with padding_mode={conv.padding_mode!r}")
            input_pad, mode, padding = conv._reversed_padding_repeated_twice, conv.padding_mode, (0, 0)
        m = cls(
            qw.shape,
            cls._layouts(qw),
            perm_storage(qw),
            conv.bias is not None,
            conv.stride,
            padding,
            conv.dilation,
            conv.groups,
            input_pad,
            mode,
            device=conv.weight.device,
        )
        m._fill(qw, conv.bias)
        return m.train(conv.training)

    def _extra_spec(self) -> dict[str, Any]:
        return {
            "stride": _ints(self.stride),
            "padding": _ints(self.padding),
            "dilation": _ints(self.dilation),
            "groups": self.groups,
            "input_pad": None if self.input_pad is None else _ints(self.input_pad),
            "input_pad_mode": self.input_pad_mode,
        }

    @classmethod
    def _extra_from_spec(cls, spec: dict) -> dict[str, Any]:
        keys = ("stride", "padding", "dilation", "groups", "input_pad", "input_pad_mode")
        return {k: spec[k] for k in keys}

    def forward(self, x: Tensor) -> Tensor:
        if self.input_pad is not None:
            x = F.pad(x, self.input_pad, mode=self.input_pad_mode)
        w = self._weight(x.dtype)
        return F.conv2d(x, w, self._bias(x.dtype), self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stride={self.stride}, padding={self.padding}, groups={self.groups}"


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")  # torch.bfloat16 -> "bfloat16", a key of _DTYPES


class QuantEmbedding(QuantModule):
    """nn.Embedding with a packed quantized table (num_embeddings, embedding_dim): one row per token, grouped
    along the embedding dimension. A lookup unpacks and dequantizes only the rows it needs (when each row takes
    whole bytes in one segment), so the float table is never built; the output has the dtype the
    float embedding had (`dtype`, follows `.to(dtype)`)."""

    float_type = nn.Embedding

    def __init__(
        self,
        shape: Sequence[int],
        layouts: Sequence[SegmentLayout],
        has_perm: bool | str,
        has_bias: bool,
        padding_idx: int | None = None,
        dtype: str = "float32",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(shape, layouts, has_perm, has_bias, device)
        if len(self.weight_shape) != 2 or has_bias:
            raise ValueError(f"QuantEmbedding: shape={self.weight_shape} must be (num_embeddings, dim), no bias")
        if dtype not in _DTYPES:
            raise ValueError(f"QuantEmbedding: dtype={dtype!r}; valid: {', '.join(_DTYPES)}")
        self.num_embeddings, self.embedding_dim = self.weight_shape
        self.padding_idx = None if padding_idx is None else int(padding_idx)
        # an empty tensor that `.to(dtype)` converts like a float parameter: the dtype of the looked-up rows
        self.register_buffer("dtype_probe", torch.empty(0, dtype=_DTYPES[dtype], device=device), persistent=False)

    @classmethod
    def from_float(cls, emb: nn.Embedding, qw: QuantizedWeight) -> QuantEmbedding:
        """Pack `qw` (the quantized `emb.weight`), keeping `padding_idx` and the table's dtype."""
        cls._check_float(emb, qw)
        if type(emb).forward is not nn.Embedding.forward:
            raise TypeError(f"{type(emb).__name__} overrides nn.Embedding.forward; QuantEmbedding cannot replace it")
        if emb.max_norm is not None:
            raise TypeError(f"{emb}: max_norm renormalises the table in place at lookup; it cannot be packed")
        dtype = _dtype_name(emb.weight.dtype)
        m = cls(qw.shape, cls._layouts(qw), perm_storage(qw), False, emb.padding_idx, dtype, emb.weight.device)
        m._fill(qw, None)
        return m.train(emb.training)

    def _extra_spec(self) -> dict[str, Any]:
        return {"padding_idx": self.padding_idx, "dtype": _dtype_name(self.dtype_probe.dtype)}

    @classmethod
    def _extra_from_spec(cls, spec: dict) -> dict[str, Any]:
        return {"padding_idx": spec["padding_idx"], "dtype": spec["dtype"]}

    def rows(self, ids: Tensor) -> Tensor:
        """Float32 rows (len(ids), dim) of the table for a 1-D tensor of token ids."""
        lay = self.layouts[0]
        if len(self.layouts) > 1 or lay.n_cols * lay.bits % 8:
            return self.dequantized_weight()[ids]
        row_bytes = lay.n_cols * lay.bits // 8
        packed = self.qweight_0.view(self.num_embeddings, row_bytes)[ids]  # (k, row_bytes): rows are byte-aligned
        codes = unpack_bits(packed.reshape(-1), lay.bits, len(ids) * lay.n_cols).view(len(ids), lay.n_cols)
        if lay.codebook_rows:
            book = self.codebook_0 if lay.codebook_rows == 1 else self.codebook_0[ids]
            w = dequantize_segment(codes, lay.group_size, codebook=book)
        else:
            w = dequantize_segment(codes, lay.group_size, self.scale_0[ids], self.zero_0[ids])
        return unpermute_columns(w, self.column_perm())  # a GPTQ-rounded (act-order) table: columns permuted

    def forward(self, ids: Tensor) -> Tensor:
        dtype = self.dtype_probe.dtype
        if self.cache_dequantized:
            return F.embedding(ids, self._weight(dtype))
        unique, inverse = torch.unique(ids, return_inverse=True)  # each needed row unpacked once
        return F.embedding(inverse, self.rows(unique).to(dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, padding_idx={self.padding_idx}"


class QuantTiedLinear(nn.Module):
    """nn.Linear (no bias) whose weight is a QuantEmbedding's table: the output layer of tied input and output
    embeddings (a language model's `lm_head`). It stores nothing itself: the table is held by reference, not as a
    submodule, so its tensors are saved once, under the table's name (`tied_to`)."""

    def __init__(self, table: QuantEmbedding, tied_to: str) -> None:
        super().__init__()
        if not isinstance(table, QuantEmbedding):
            raise TypeError(f"QuantTiedLinear: tied_to={tied_to!r} is a {type(table).__name__}, not a QuantEmbedding")
        self.tied_to = tied_to
        self._table = (table,)  # a tuple, which nn.Module does not register: the table has one owner
        self.out_features, self.in_features = table.weight_shape

    @property
    def table(self) -> QuantEmbedding:
        return self._table[0]

    @classmethod
    def from_float(cls, linear: nn.Linear, table: QuantEmbedding, tied_to: str) -> QuantTiedLinear:
        """The output layer `linear`, whose weight was the table now packed as `table` (at `tied_to`)."""
        if type(linear).forward is not nn.Linear.forward or linear.bias is not None:
            raise TypeError(f"{linear}: a tied output layer must be a plain nn.Linear without bias")
        if tuple(linear.weight.shape) != table.weight_shape:
            raise ValueError(f"{linear} does not fit the table {tied_to} of shape {table.weight_shape}")
        return cls(table, tied_to).train(linear.training)

    def spec(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "tied_to": self.tied_to, "shape": [self.out_features, self.in_features]}

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.table._weight(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied_to={self.tied_to!r}"


TIED = QuantTiedLinear.__name__  # the spec type of a tied output layer


def module_specs(model: nn.Module) -> dict[str, dict]:
    """Qualified name → spec of every packed module and tied output layer, in registration order."""
    return {name: m.spec() for name, m in model.named_modules() if isinstance(m, QuantModule | QuantTiedLinear)}


QUANT_MODULES: dict[str, type[QuantModule]] = {
    "QuantLinear": QuantLinear,
    "QuantConv2d": QuantConv2d,
    "QuantEmbedding": QuantEmbedding,
}


def module_from_spec(spec: dict, device: torch.device | str | None = None) -> QuantModule:
    """An empty QuantLinear / QuantConv2d / QuantEmbedding from a `spec()` dict (ValueError if the type is unknown)."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in QUANT_MODULES:
        raise ValueError(f"unknown quantized module type {kind!r}; valid: {', '.join(QUANT_MODULES)}")
    return QUANT_MODULES[kind].from_spec(spec, device)


def quantized_modules(model: nn.Module) -> dict[str, QuantModule]:
    """Qualified name → packed module, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantModule)}


def set_dequant_cache(model: nn.Module, enabled: bool = True) -> None:
    """Keep (or stop keeping) each packed module's dequantized weight between forward calls.

    Caching trades the memory of a float copy of every quantized weight for speed (evaluation loops).
    """
    for m in quantized_modules(model).values():
        m.cache_dequantized = enabled
        m._cached = None


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path `name` (which must exist) by `module`."""
    if not name:
        raise ValueError("name: cannot replace the root module; give a submodule's qualified name")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child not in parent._modules:
        raise AttributeError(f"{type(parent).__name__} has no submodule {child!r} (from {name!r})")
    setattr(parent, child, module)


def quantize_module_inplace(model: nn.Module, name: str, qw: QuantizedWeight) -> QuantModule:
    """Swap the nn.Linear / nn.Conv2d / nn.Embedding at `name` for its packed module; returns the new module."""
    try:
        target = model.get_submodule(name)
    except AttributeError as exc:
        raise ValueError(f"name={name!r}: no such submodule ({exc})") from None
    if isinstance(target, nn.Conv2d):
        new: QuantModule = QuantConv2d.from_float(target, qw)
    elif isinstance(target, nn.Linear):
        new = QuantLinear.from_float(target, qw)
    elif isinstance(target, nn.Embedding):
        new = QuantEmbedding.from_float(target, qw)
    else:
        kind = type(target).__name__
        raise TypeError(f"{name!r} is a {kind}; only nn.Linear, nn.Conv2d and nn.Embedding can be quantized")
    set_submodule(model, name, new)
    return new
