"""A user's own Hugging Face decoder directory: loaded, quantized, saved self-contained and loaded again."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from bayesquant.api import quantize
from bayesquant.config import QuantizeConfig
from bayesquant.errors import ModelError
from bayesquant.models import Task, load_model
from tests.test_cli import assert_one_line_error, run

ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("smollm2-135m").tokenizer  # a real tokenizer; the decoders below are tiny and random


def tiny_decoder(directory, arch: str, tokenizer, with_tokenizer: bool = True):
    config_cls, model_cls = ARCHS[arch]
    config = config_cls(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    model_cls(config).save_pretrained(directory)
    if with_tokenizer:
        tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_decoder_directory_quantizes_and_its_checkpoint_loads_without_the_source(tmp_path, tokenizer, arch):
    source = tiny_decoder(tmp_path / "mine", arch, tokenizer)
    loaded = load_model(source)
    assert loaded.task == Task.CAUSAL_LM and loaded.family.name == "llama"
    assert loaded.key == str(source.resolve())
    names = list(loaded.family.quantizable_modules(loaded.module))
    assert len(names) == 14 and "lm_head" not in names  # 7 projections × 2 layers; the tied head stays float
    before = loaded.module.model.layers[0].self_attn.q_proj.weight.detach().clone()
    result = quantize(loaded, QuantizeConfig(method="gptq", bits=3, nsamples=2, seq_len=32))
    packed = result.save(tmp_path / "packed")
    assert (packed / "source" / "config.json").is_file() and (packed / "source" / "tokenizer.json").is_file()
    assert json.loads((packed / "config.json").read_text())["source"] == "source"
    shutil.rmtree(source)  # the checkpoint carries what it needs
    again = load_model(packed)
    assert again.key == loaded.key and again.task == Task.CAUSAL_LM
    ids = torch.randint(0, tokenizer.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = result.model.module(input_ids=ids).logits
        got = again.module(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    deq = again.module.model.layers[0].self_attn.q_proj.dequantized_weight()
    assert not torch.equal(deq, before)
    assert max(row.unique().numel() for row in deq) <= 8  # 3 bits per channel: at most 2³ levels in a row


def test_cli_quantizes_and_evaluates_a_decoder_directory(tmp_path, capsys, tokenizer):
    source = tiny_decoder(tmp_path / "mine", "llama", tokenizer)
    out = tmp_path / "q"
    code, stdout, err = run(capsys, "quantize", "--model", str(source), "--method", "rtn", "--bits", "4",
                            "--out", str(out), "--eval", "bbc-news:test", "--max-windows", "1")  # fmt: skip
    assert code == 0, err
    assert "perplexity" in stdout
    code, stdout, err = run(capsys, "eval", "--model", str(out), "--data", "bbc-news:test", "--max-windows", "1",
                            "--seq-len", "32")  # fmt: skip
    assert code == 0, err
    assert "perplexity" in stdout


def test_directories_that_cannot_be_used_are_refused_by_name(tmp_path, capsys, tokenizer):
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ModelError, match=r"BertForMaskedLM, not a causal language model"):
        load_model(encoder)
    bare = tiny_decoder(tmp_path / "bare", "llama", tokenizer, with_tokenizer=False)
    with pytest.raises(ModelError, match=r"no tokenizer could be read.*tokenizer.save_pretrained"):
        load_model(bare)
    other = tmp_path / "other"
    other.mkdir()
    code, _, err = run(capsys, "quantize", "--model", str(other), "--method", "rtn", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, str(other), "Hugging Face directory (config.json)")


def test_a_checkpoint_whose_source_points_elsewhere_is_refused(tmp_path, tokenizer):
    source = tiny_decoder(tmp_path / "mine", "llama", tokenizer)
    packed = quantize(load_model(source), QuantizeConfig(method="rtn", bits=4)).save(tmp_path / "packed")
    config = json.loads((packed / "config.json").read_text())
    (packed / "config.json").write_text(json.dumps({**config, "source": "../mine"}))
    with pytest.raises(ModelError, match=r"'source' must be 'source', not '../mine'"):
        load_model(packed)
