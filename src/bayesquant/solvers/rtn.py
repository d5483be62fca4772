"""Round-to-nearest: each group's uniform grid from its own weights, no error feedback."""

from __future__ import annotations

import torch

from bayesquant.nn.qweight import QuantizedSegment, QuantizedWeight
from bayesquant.quantizers.uniform import fit_uniform, quantize_uniform


def rtn_quantize(
    W: torch.Tensor, bits: int, *, group_size: int | None = None, symmetric: bool = False, method: str = "minmax"
) -> QuantizedWeight:
    """Quantize W (rows, columns) group by group along the input dimension (per channel when no group)."""
    W = W.detach().float()
    rows, columns = W.shape
    g = columns if not group_size or group_size >= columns else group_size
    codes, scales, zeros = [], [], []
    for i in range(0, columns, g):
        params = fit_uniform(W[:, i : i + g], bits, symmetric=symmetric, method=method)
        codes.append(quantize_uniform(W[:, i : i + g], params).long())
        scales.append(params.scale)
        zeros.append(params.zero)
    segment = QuantizedSegment(
        bits=bits, codes=torch.cat(codes, 1), group_size=g, scale=torch.cat(scales, 1), zero=torch.cat(zeros, 1)
    )
    return QuantizedWeight(shape=(rows, columns), segments=[segment])


def codebook_rtn(W: torch.Tensor, bits: int, quantizer: str, *, group_size: int | None = None) -> QuantizedWeight:
    """Nearest-level codes against a per-row (or per-group) codebook: "quantile" or "lloyd_max"."""
    from bayesquant.quantizers import QUANTIZERS

    W = W.detach().float()
    rows, columns = W.shape
    g = columns if not group_size or group_size >= columns else group_size
    if columns % g:
        raise ValueError(f"group_size={g} must divide the {columns} columns for a codebook quantizer")
    blocks = W.reshape(rows * (columns // g), g)  # one codebook per (row, group)
    fit = QUANTIZERS.get(quantizer)(blocks, bits)
    codes = fit.codes.long().reshape(rows, columns)
    codebook = fit.params.reshape(rows, columns // g, 1 << bits)
    segment = QuantizedSegment(bits=bits, codes=codes, group_size=g, codebook=codebook)
    return QuantizedWeight(shape=(rows, columns), segments=[segment])
