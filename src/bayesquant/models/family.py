"""Model families described as data: which modules are quantizable and what the block sequence is.

Later stages (posteriors, layer-by-layer quantization) ask a family for `quantizable(model)` and
`blocks(model)` instead of carrying per-model surgery code.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Family:
    """How to walk one family of models.

    name: e.g. "llama".
    blocks: dotted path to the sequence of blocks processed one after another (a ModuleList or
        Sequential), or None when the whole model is a single block.
    quantizable: module types whose `weight` is quantized.
    skip: fnmatch patterns of qualified names never quantized (e.g. the tied LM head).
    sequential: true-sequential groups of names relative to a block: modules of one group share their
        input and are quantized together, each group after the previous one is quantized (GPTQ's
        `--true-sequential`). Empty: every module of a block is its own group, in registration order.
    mixed_grid: the grid range of BayesQ and BAQ on this family when `--grid` is not given (docs/results.md,
        "BayesQ's other options"): "mse" (the importance-weighted range search: transformers, whose rows have
        outliers) or "minmax" (convolutional nets, where clipping each row's largest weights leaves the model
        under-confident and less accurate).
    """

    name: str
    blocks: str | None
    quantizable: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
    skip: tuple[str, ...] = ()
    sequential: tuple[tuple[str, ...], ...] = ()
    mixed_grid: str = "mse"

    def quantizable_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Qualified name → module, in registration (forward) order."""
        return {
            name: m
            for name, m in model.named_modules()
            if isinstance(m, self.quantizable) and not any(fnmatch.fnmatchcase(name, p) for p in self.skip)
        }

    def block_list(self, model: nn.Module) -> list[nn.Module]:
        """The blocks in order; `[model]` when the family has no block path."""
        if self.blocks is None:
            return [model]
        seq = model.get_submodule(self.blocks)
        return list(seq.children())

    def block_prefix(self, index: int) -> str:
        """Qualified-name prefix of block `index` (for mapping plan entries to blocks)."""
        return "" if self.blocks is None else f"{self.blocks}.{index}."


LLAMA_SEQUENTIAL = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
BERT_SEQUENTIAL = (
    ("attention.self.query", "attention.self.key", "attention.self.value"),
    ("attention.output.dense",),
    ("intermediate.dense",),
    ("output.dense",),
)

FAMILIES: dict[str, Family] = {
    # SmolLM2 and other Llama decoders: the tied embedding/LM head stays in floating point.
    "llama": Family("llama", "model.layers", (nn.Linear,), skip=("lm_head",), sequential=LLAMA_SEQUENTIAL),
    # A BERT encoder on its own (MiniLM).
    "bert": Family("bert", "encoder.layer", (nn.Linear,), skip=("pooler.*",), sequential=BERT_SEQUENTIAL),
    # BERT encoder + classification head (minilm-bbc); the pooler is unused.
    "bert-classifier": Family(
        "bert-classifier", "encoder.encoder.layer", (nn.Linear,), skip=("encoder.pooler.*",), sequential=BERT_SEQUENTIAL
    ),
    # Small CNNs and MLPs: one block, every Linear/Conv2d quantizable.
    "small-net": Family("small-net", blocks=None, mixed_grid="minmax"),
    # Residual nets: the stem, each residual block, and the head are processed in order.
    "resnet": Family("resnet", blocks="net", mixed_grid="minmax"),
    # EfficientNet-Lite: its MBConv blocks (stem, head and classifier are handled after the blocks). The mixed
    # methods' grid stays the search: its 9-column depthwise rows are not measured.
    "efficientnet": Family("efficientnet", blocks="net._blocks"),
}
