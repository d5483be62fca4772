"""Embedding tables, quantized on request (`--embedding-bits`): round to nearest, one grid per row (token) or per
group of `group_size` entries of a row, the range of each grid shrunk where that lowers Σ|Q(w) − w|^2.4 (the
`mse` search of `fit_uniform`, GPTQ's).

Why no error feedback: a lookup multiplies the table by a one-hot vector, so the layer Hessian over the
vocabulary, 2·XXᵀ/N, is diagonal (the token counts) and GPTQ's update of the not-yet-quantized columns is zero —
GPTQ on an embedding table is round-to-nearest. Every row is rounded on its own; how often a token occurs changes
nothing about which grid is best for its row.

Input and output embeddings that share one weight (SmolLM2's `tie_word_embeddings`) are refused: quantizing the
table would quantize the output layer too, which every method here keeps in floating point.

>>> from bayesquant.solvers.embedding import embedding_targets, quantize_embedding
>>> targets = embedding_targets(model)  # doctest: +SKIP
>>> qw = quantize_embedding(targets["bert.embeddings.word_embeddings"], bits=4)  # doctest: +SKIP
"""

from __future__ import annotations

from torch import nn

from bayesquant.errors import UserError
from bayesquant.nn.qweight import QuantizedWeight
from bayesquant.solvers.rtn import rtn_quantize

__all__ = ["EMBEDDING_GRID", "embedding_targets", "quantize_embedding"]

EMBEDDING_GRID = "mse"  # the range search of `fit_uniform`; its first candidate is the min–max range


def embedding_targets(model: nn.Module) -> dict[str, nn.Embedding]:
    """Qualified name → every nn.Embedding of `model` to quantize; UserError when there is none, or when one
    shares its weight with another module (tied input/output embeddings) or cannot be packed."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    if not found:
        raise UserError(
            f"--embedding-bits: {type(model).__name__} has no nn.Embedding table to quantize; leave the option out"
        )
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    for name, emb in found.items():
        others = [p for p in owners[id(emb.weight)] if p != f"{name}.weight"]
        if others:
            raise UserError(
                f"--embedding-bits: {name}.weight is shared with {', '.join(others)} (tied input and output "
                "embeddings); quantizing it would quantize that output layer too, which stays in floating point. "
                "Leave --embedding-bits out for this model"
            )
        if type(emb).forward is not nn.Embedding.forward or emb.max_norm is not None:
            why = "max_norm renormalises rows at lookup" if emb.max_norm is not None else "it overrides forward"
            raise UserError(f"--embedding-bits: {name} ({type(emb).__name__}) cannot be packed: {why}")
    return found


def quantize_embedding(emb: nn.Embedding, bits: int, group_size: int | None = None) -> QuantizedWeight:
    """The table (num_embeddings, dim) rounded to `bits` with one asymmetric grid per row, or per `group_size`
    entries of a row."""
    return rtn_quantize(emb.weight.detach(), bits, group_size=group_size, method=EMBEDDING_GRID)
