"""Quantized embedding tables (`--embedding-bits`): the packed QuantEmbedding, which tables are taken, the size
report's separate line, and a whole classifier quantized, saved and loaded with them."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesquant.io as bio
from bayesquant.api import quantize
from bayesquant.config import QuantizeConfig
from bayesquant.data import load_bbc_news
from bayesquant.errors import UserError
from bayesquant.eval import predict_probs
from bayesquant.io import load_quantized, save_quantized, size_report
from bayesquant.models import FAMILIES, LoadedModel, Task, load_model, nets
from bayesquant.nn import (
    QuantEmbedding,
    QuantizedWeight,
    QuantLinear,
    QuantTiedLinear,
    quantize_module_inplace,
    set_dequant_cache,
)
from bayesquant.nn.layers import module_from_spec
from bayesquant.solvers.embedding import Table, embedding_targets, quantize_embedding
from bayesquant.solvers.gptq import gptq_quantize
from bayesquant.solvers.rtn import rtn_quantize
from tests.test_cli import run
from tests.test_hf_dir import tiny_classifier, tiny_decoder, wordpiece  # noqa: F401 (a fixture)
from tests.test_hf_dir import tokenizer as smollm_tokenizer  # noqa: F401 (a fixture)
from tests.test_io import tiny_llama
from tests.test_quant_layers import random_codebook_segment


def packed(table: nn.Embedding, qw: QuantizedWeight) -> QuantEmbedding:
    holder = nn.ModuleDict({"emb": table})
    return quantize_module_inplace(holder, "emb", qw)


@pytest.mark.parametrize(
    ("dim", "bits", "group_size"),
    [(16, 3, None), (16, 4, 8), (5, 3, None), (40, 2, 16)],  # 5·3 bits: rows not byte-aligned, the general path
)
def test_a_lookup_returns_the_dequantized_rows(dim, bits, group_size):
    torch.manual_seed(0)
    table = nn.Embedding(50, dim, padding_idx=1).double()
    qw = quantize_embedding(table, bits, group_size)
    emb = packed(table, qw)
    assert isinstance(emb, QuantEmbedding) and emb.padding_idx == 1
    ids = torch.tensor([[3, 1, 49, 3], [0, 7, 7, 2]])
    full = emb.dequantized_weight()
    out = emb(ids)
    assert out.dtype == torch.float64 and out.shape == (2, 4, dim)  # the float table's dtype
    assert torch.equal(out, F.embedding(ids, full.double()))
    assert (full - qw.dequantize()).abs().max() <= 2e-3 * qw.dequantize().abs().max()  # float16 grids only
    levels = max(row.unique().numel() for row in full[:, : group_size or dim])
    assert levels <= 2**bits
    set_dequant_cache(emb)
    assert torch.equal(emb(ids), out)


def test_a_table_rounded_for_its_tied_output_layer_lowers_that_layers_error():
    torch.manual_seed(0)
    table = nn.Embedding(64, 24).double()
    mix = torch.randn(24, 24, dtype=torch.float64)
    X = torch.randn(500, 24, dtype=torch.float64) @ mix  # correlated hidden states, as an output layer sees
    H = 2 * X.T @ X / len(X)
    W = table.weight.detach().float()

    def output_error(qw):
        return float(((qw.dequantize() - W) @ H.float() @ (qw.dequantize() - W).T).trace())

    for group_size in (None, 8):
        gptq = quantize_embedding(table, 3, group_size, H=H.float())
        assert output_error(gptq) < 0.8 * output_error(quantize_embedding(table, 3, group_size))
        assert (gptq.perm is not None) == (group_size is not None)  # act-order groups: columns stored permuted
        emb = packed(table, gptq)
        ids = torch.tensor([5, 63, 0, 5])
        assert torch.equal(emb(ids), F.embedding(ids, emb.dequantized_weight().double()))


def test_codebook_tables_and_the_dtype_follow_the_module():
    torch.manual_seed(0)
    table = nn.Embedding(12, 8)
    for rows in (1, 12):
        qw = QuantizedWeight((12, 8), [random_codebook_segment(12, 8, 2, 4, rows)])
        emb = packed(nn.Embedding(12, 8), qw)
        ids = torch.tensor([11, 0, 5, 5])
        assert torch.equal(emb(ids), emb.dequantized_weight()[ids])
    emb = packed(table, quantize_embedding(table, 4))
    assert emb.to(torch.bfloat16)(torch.tensor([2])).dtype == torch.bfloat16
    assert emb.spec()["dtype"] == "bfloat16" and emb.scale_0.dtype == torch.float16  # grids stay float16
    again = module_from_spec(json.loads(json.dumps(emb.spec())))
    again.load_state_dict(emb.state_dict())  # the dtype is not a stored tensor
    ids = torch.tensor([[0, 11], [3, 3]])
    assert torch.equal(again(ids), emb(ids)) and again(ids).dtype == torch.bfloat16


def test_tables_that_cannot_be_packed_are_refused():
    table = nn.Embedding(10, 4, max_norm=1.0)
    with pytest.raises(TypeError, match="max_norm"):
        packed(table, quantize_embedding(table, 4))

    class Scaled(nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 2.0

    with pytest.raises(UserError, match="overrides forward"):
        embedding_targets(nn.Sequential(Scaled(10, 4)))


def test_gptq_with_a_one_hot_input_is_round_to_nearest():
    """A lookup's layer Hessian is diagonal (token counts): GPTQ then has no error to feed forward."""
    torch.manual_seed(0)
    W = torch.randn(8, 32, dtype=torch.float64)
    counts = torch.randint(1, 50, (32,)).double()
    for group_size in (None, 8):
        gptq = gptq_quantize(W, torch.diag(counts), 3, group_size=group_size).qweight.dequantize()
        assert torch.equal(gptq, rtn_quantize(W, 3, group_size=group_size).dequantize())
    dense = torch.randn(32, 32, dtype=torch.float64)
    gptq = gptq_quantize(W, dense @ dense.T, 3).qweight.dequantize()  # a correlated input: feedback changes codes
    assert not torch.equal(gptq, rtn_quantize(W, 3).dequantize())


def test_which_tables_are_taken(tmp_path, wordpiece):  # noqa: F811
    bert = load_model(tiny_classifier(tmp_path / "bert", wordpiece)).module
    tables = embedding_targets(bert)
    assert list(tables) == [f"model.bert.embeddings.{t}_embeddings" for t in ("word", "position", "token_type")]
    assert all(t.tied == () for t in tables.values())
    llama = tiny_llama()[0]
    assert embedding_targets(llama) == {"model.embed_tokens": Table(llama.model.embed_tokens, ("lm_head",))}
    with pytest.raises(UserError, match=r"LeNet5 has no nn\.Embedding"):
        embedding_targets(nets.LeNet5())
    shared = nn.ModuleDict({"a": nn.Embedding(10, 4), "b": nn.Embedding(10, 4), "c": nn.Linear(4, 10)})
    shared.b.weight = shared.a.weight
    with pytest.raises(UserError, match=r"a.weight is shared with b.weight \(Embedding\); only an nn.Linear"):
        embedding_targets(shared)
    shared.b = nn.Embedding(10, 4)
    shared.c.weight = shared.a.weight  # an output layer with a bias cannot read the table
    with pytest.raises(UserError, match=r"shared with c.weight \(Linear\)"):
        embedding_targets(shared)


class Bag(nn.Module):
    """A table and a linear layer: the smallest model with both kinds of quantized module."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


def test_the_size_report_counts_tables_on_their_own_line(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = Bag().eval()
    quantize_module_inplace(model, "fc", rtn_quantize(model.fc.weight, 4))  # 64 weights, one grid per row
    quantize_module_inplace(model, "emb", quantize_embedding(model.emb, 3, group_size=8))
    out = save_quantized(model, tmp_path / "bag", key="bag", method="rtn")
    size = size_report(out)
    assert size == size_report(model)
    fc_bytes = 64 * 4 / 8 + 4 * 2 * 2  # codes; a float16 scale and zero per row
    assert size["n_quantized_weights"] == 64 and size["quantized_bytes"] == fc_bytes
    assert size["storable_bits"] == fc_bytes * 8 / 64  # the table is not in the layers' figure
    emb_bytes = 480 * 3 / 8 + 30 * 2 * 2 * 2  # codes; scale and zero per row and group of 8
    row = {"n_weights": 480, "nominal_bits": 3.0, "storable_bits": emb_bytes * 8 / 480, "bytes": emb_bytes}
    assert size["embeddings"] == {**row, "modules": [{"module": "emb", **row}]}
    assert size["other_bytes"] == 4 * 4  # the float32 bias, nothing of the table
    total = (out / "model.safetensors").stat().st_size
    assert fc_bytes + emb_bytes + size["other_bytes"] < total < fc_bytes + emb_bytes + size["other_bytes"] + 2048
    monkeypatch.setattr(bio, "_rebuild", lambda key: LoadedModel(key, Bag().eval(), Task.TEXT, FAMILIES["small-net"]))
    loaded = load_quantized(out).module
    assert isinstance(loaded.emb, QuantEmbedding) and isinstance(loaded.fc, QuantLinear)
    ids = torch.randint(0, 30, (3, 5))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_a_classifier_quantizes_its_tables_saves_and_loads_them(tmp_path, wordpiece):  # noqa: F811
    loaded = load_model(tiny_classifier(tmp_path / "mine", wordpiece))
    data = load_bbc_news("test").subset(6)
    float_probs = predict_probs(loaded, data)[0]
    result = quantize(loaded, QuantizeConfig(method="gptq", bits=4, nsamples=8, embedding_bits=4,
                                             embedding_group_size=16))  # fmt: skip
    word = result.model.module.model.bert.embeddings.word_embeddings
    assert isinstance(word, QuantEmbedding) and word.weight_shape == (wordpiece.vocab_size, 32)
    assert max(row[:16].unique().numel() for row in word.dequantized_weight()[:200]) <= 16
    out = result.save(tmp_path / "q")
    again = load_model(out)
    probs = predict_probs(again, data)[0]
    assert torch.equal(probs, predict_probs(result.model, data)[0])
    assert not torch.equal(probs, float_probs)
    meta = again.meta
    assert set(meta["extra"]["embeddings"]) == set(embedding_targets(load_model(tmp_path / "mine").module))
    assert meta["extra"]["config"]["embedding_bits"] == 4
    assert {e["grid"] for e in meta["extra"]["embeddings"].values()} == {"mse"}  # lookups only: nearest rounding
    n_table = sum(math.prod(s["shape"]) for s in meta["modules"].values() if s["type"] == "QuantEmbedding")
    assert meta["size"]["embeddings"]["n_weights"] == n_table
    assert meta["size"]["embeddings"]["storable_bits"] == pytest.approx(4 + 32 / 16)  # two float16 grids per 16


def test_cli_reports_the_tables(tmp_path, capsys, wordpiece):  # noqa: F811
    source = tiny_classifier(tmp_path / "mine", wordpiece)
    code, stdout, err = run(capsys, "quantize", "--model", str(source), "--method", "rtn", "--bits", "4",
                            "--embedding-bits", "8", "--out", str(tmp_path / "q"))  # fmt: skip
    assert code == 0, err
    header, row = stdout.strip().splitlines()[-2:]
    cells = dict(zip(header.split(), row.split(), strict=True))
    assert float(cells["embedding_storable_bits"]) == pytest.approx(8 + 32 / 32)  # per row: 32 bits over 32
    assert float(cells["file_mb"]) == pytest.approx((tmp_path / "q" / "model.safetensors").stat().st_size / 1e6,
                                                    abs=1e-4)  # fmt: skip


def test_a_tied_table_is_packed_once_and_the_output_layer_reads_it(tmp_path, smollm_tokenizer):  # noqa: F811
    source = load_model(tiny_decoder(tmp_path / "dec", "llama", smollm_tokenizer))
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        float_logits = source.module(ids).logits
    result = quantize(source, QuantizeConfig(method="gptq", bits=4, nsamples=2, seq_len=32, embedding_bits=4))
    model = result.model.module
    head, table = model.lm_head, model.model.embed_tokens
    assert isinstance(head, QuantTiedLinear) and head.table is table and head.tied_to == "model.embed_tokens"
    out = result.save(tmp_path / "q")
    again = load_model(out)
    loaded_head, loaded_table = again.module.lm_head, again.module.model.embed_tokens
    assert isinstance(loaded_head, QuantTiedLinear) and loaded_head.table is loaded_table
    with torch.no_grad():
        logits = again.module(ids).logits
        assert torch.equal(logits, model(ids).logits)
        hidden = again.module.model(ids).last_hidden_state
        assert torch.equal(logits, F.linear(hidden, loaded_table.dequantized_weight()))  # the table is the head
    assert not torch.equal(logits, float_logits)
    assert again.meta["extra"]["embeddings"]["model.embed_tokens"]["grid"] == "gptq-minmax"  # for the output layer
    size = again.meta["size"]
    assert size["embeddings"]["tied"] == {"lm_head": "model.embed_tokens"}
    assert size["embeddings"]["n_weights"] == smollm_tokenizer.vocab_size * 32  # the shared table counted once
    assert "lm_head" not in {r["module"] for r in size["modules"]}
    stored = bio._tensor_bytes(out / "model.safetensors")
    assert not any(k.startswith("lm_head") for k in stored)
    assert size["other_bytes"] < 4 * smollm_tokenizer.vocab_size * 32 / 10  # no float copy of the table is left


def test_a_tied_output_layer_that_the_method_quantizes_is_refused():
    tied = Bag()
    tied.fc = nn.Linear(16, 30, bias=False)
    tied.fc.weight = tied.emb.weight
    loaded = LoadedModel("bag", tied.eval(), Task.TEXT, FAMILIES["small-net"])  # every Linear is a layer to round
    with pytest.raises(UserError, match=r"emb is tied to fc, which --method rtn quantizes as a layer"):
        quantize(loaded, QuantizeConfig(method="rtn", bits=4, embedding_bits=4))


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [({"embedding_bits": 9}, "--embedding-bits 9"), ({"embedding_bits": True}, "--embedding-bits True"),
     ({"embedding_group_size": 8}, "only with --embedding-bits"),
     ({"embedding_bits": 4, "embedding_group_size": 0}, "--embedding-group-size 0")],
)  # fmt: skip
def test_bad_embedding_settings_are_refused_by_name(kw, fragment):
    with pytest.raises(UserError, match=fragment):
        QuantizeConfig(**kw)
