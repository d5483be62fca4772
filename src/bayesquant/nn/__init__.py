"""Packed quantized weights and layers: bit packing, `QuantizedWeight`, `QuantLinear` / `QuantConv2d` /
`QuantEmbedding`."""

from bayesquant.nn.layers import (
    QuantConv2d,
    QuantEmbedding,
    QuantLinear,
    QuantModule,
    QuantTiedLinear,
    SegmentLayout,
    module_from_spec,
    module_specs,
    quant_tensor_names,
    quantize_module_inplace,
    quantized_modules,
    set_dequant_cache,
    set_submodule,
)
from bayesquant.nn.packing import pack_bits, packed_nbytes, unpack_bits
from bayesquant.nn.qweight import QuantizedSegment, QuantizedWeight, dequantize_segment, unpermute_columns

__all__ = [
    "QuantConv2d",
    "QuantEmbedding",
    "QuantLinear",
    "QuantModule",
    "QuantTiedLinear",
    "QuantizedSegment",
    "QuantizedWeight",
    "SegmentLayout",
    "dequantize_segment",
    "module_from_spec",
    "module_specs",
    "pack_bits",
    "packed_nbytes",
    "quant_tensor_names",
    "quantize_module_inplace",
    "quantized_modules",
    "set_dequant_cache",
    "set_submodule",
    "unpack_bits",
    "unpermute_columns",
]
