"""Perplexity on a tiny randomly initialised Llama built offline."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bayesquant.data import TextData
from bayesquant.eval import evaluate_lm
from bayesquant.models import FAMILIES, LoadedModel, Task


class CharTokenizer:
    """Maps each character to its code point modulo the vocabulary (enough for a perplexity test)."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, text, add_special_tokens=False, return_attention_mask=False, verbose=False):
        return {"input_ids": [ord(c) % self.vocab for c in text]}


@pytest.fixture
def tiny_llama() -> LoadedModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    return LoadedModel("tiny-llama", model, Task.CAUSAL_LM, FAMILIES["llama"], tokenizer=CharTokenizer(97))


def test_perplexity_matches_the_models_own_loss(tiny_llama):
    text = TextData("t", "x", ["the quick brown fox jumps over the lazy dog " * 12])
    n_tokens = len(text.joined())
    out = evaluate_lm(tiny_llama, text, seq_len=64, batch_size=3)
    windows = torch.tensor([ord(c) % 97 for c in text.joined()])[: (n_tokens // 64) * 64].view(-1, 64)
    with torch.no_grad():
        losses = [float(tiny_llama.module(input_ids=w[None], labels=w[None]).loss) for w in windows]
    assert out["n_windows"] == n_tokens // 64 == len(losses)
    assert out["perplexity"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    # a random model is near-uniform over 97 tokens
    assert 40 < out["perplexity"] < 250


def test_max_windows_limits_the_evaluation(tiny_llama):
    text = TextData("t", "x", ["abcdefghij" * 40])
    assert evaluate_lm(tiny_llama, text, seq_len=32, max_windows=2)["n_windows"] == 2


def test_llama_family_finds_blocks_and_skips_the_head(tiny_llama):
    fam = tiny_llama.family
    names = list(fam.quantizable_modules(tiny_llama.module))
    assert len(names) == 2 * 7 and "lm_head" not in names
    assert names[0] == "model.layers.0.self_attn.q_proj"
    assert len(fam.block_list(tiny_llama.module)) == 2
