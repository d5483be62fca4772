"""Embedding tables, quantized on request (`--embedding-bits`): round to nearest, one grid per row (token) or per
group of `group_size` entries of a row, the range of each grid shrunk where that lowers Σ|Q(w) − w|^2.4 (the
`mse` search of `fit_uniform`, GPTQ's).

Why no error feedback: a lookup multiplies the table by a one-hot vector, so the layer Hessian over the
vocabulary, 2·XXᵀ/N, is diagonal (the token counts) and GPTQ's update of the not-yet-quantized columns is zero —
GPTQ on an embedding table is round-to-nearest. Every row is rounded on its own; how often a token occurs changes
nothing about which grid is best for its row.

Input and output embeddings that share one weight (SmolLM2's `tie_word_embeddings`) are quantized once: the
output layer then reads the packed table (`QuantTiedLinear`). Its error reaches the logits directly, so such a table
is rounded by GPTQ for the output layer, with the Hessian of that layer's inputs on the calibration data (per-row
grids there are per-output-channel grids): on SmolLM2 at 4 bits per row this gives +9 % perplexity where rounding
to nearest gives +35 % (docs/results.md).

>>> from bayesquant.solvers.embedding import embedding_targets, quantize_embedding
>>> targets = embedding_targets(model)  # doctest: +SKIP
>>> qw = quantize_embedding(targets["bert.embeddings.word_embeddings"].module, bits=4)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bayesquant.errors import UserError
from bayesquant.nn.qweight import QuantizedWeight
from bayesquant.solvers.gptq import gptq_quantize
from bayesquant.solvers.hessian import HessianAccumulator
from bayesquant.solvers.rtn import rtn_quantize

__all__ = ["EMBEDDING_GRID", "Table", "embedding_targets", "output_hessian", "quantize_embedding"]

EMBEDDING_GRID = "mse"  # the range search of `fit_uniform`; its first candidate is the min–max range


@dataclass(frozen=True)
class Table:
    """An embedding table to quantize and the output layers (nn.Linear, no bias) that share its weight."""

    module: nn.Embedding
    tied: tuple[str, ...] = ()


def embedding_targets(model: nn.Module) -> dict[str, Table]:
    """Qualified name → every nn.Embedding of `model` to quantize, with the layers tied to it; UserError when there
    is none, or when one cannot be packed or shares its weight with something other than a plain output layer."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    if not found:
        raise UserError(
            f"--embedding-bits: {type(model).__name__} has no nn.Embedding table to quantize; leave the option out"
        )
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    tables = {}
    for name, emb in found.items():
        if type(emb).forward is not nn.Embedding.forward or emb.max_norm is not None:
            why = "max_norm renormalises rows at lookup" if emb.max_norm is not None else "it overrides forward"
            raise UserError(f"--embedding-bits: {name} ({type(emb).__name__}) cannot be packed: {why}")
        tied = []
        for pname in owners[id(emb.weight)]:
            if pname == f"{name}.weight":
                continue
            owner, _, attr = pname.rpartition(".")
            layer = model.get_submodule(owner)
            plain = type(layer).forward is nn.Linear.forward and layer.bias is None
            if attr != "weight" or not isinstance(layer, nn.Linear) or not plain:
                raise UserError(
                    f"--embedding-bits: {name}.weight is shared with {pname} ({type(layer).__name__}); only an "
                    "nn.Linear output layer without bias can read a packed table. Leave --embedding-bits out"
                )
            tied.append(owner)
        tables[name] = Table(emb, tuple(tied))
    return tables


def quantize_embedding(
    emb: nn.Embedding, bits: int, group_size: int | None = None, H: Tensor | None = None
) -> QuantizedWeight:
    """The table (num_embeddings, dim) rounded to `bits` with one asymmetric grid per row, or per `group_size`
    entries of a row. `H`: the (dim, dim) Hessian of a tied output layer's inputs; the table is then rounded by
    GPTQ (act-order, min–max grids) for that layer, which reads it as its weight."""
    W = emb.weight.detach()
    if H is None:
        return rtn_quantize(W, bits, group_size=group_size, method=EMBEDDING_GRID)
    return gptq_quantize(W.float(), H, bits, group_size=group_size, act_order=True).qweight


@torch.no_grad()
def output_hessian(model: nn.Module, layer: nn.Module, batches: list) -> Tensor:
    """H = 2XXᵀ/N of the inputs of `layer` (a tied output layer) over the calibration `batches` (args, kwargs)."""
    acc = HessianAccumulator(layer)
    handle = layer.register_forward_hook(acc.hook)
    try:
        for args, kwargs in batches:
            model(*args, **kwargs)
    finally:
        handle.remove()
    return acc.H
