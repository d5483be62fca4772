from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import bayesquant.io as bio
from bayesquant.errors import ModelError, UserError
from bayesquant.io import load_quantized, save_quantized, size_report
from bayesquant.models import FAMILIES, LoadedModel, Task, nets
from bayesquant.nn import QuantConv2d, QuantizedWeight, QuantLinear, quantize_module_inplace
from tests.test_quant_layers import random_codebook_segment, rtn_segments, rtn_weight


@pytest.fixture
def rebuild(monkeypatch):
    """Make load_quantized rebuild fresh, randomly initialised models instead of zoo models (no cache needed)."""
    factories = {}

    def fake(key):
        torch.manual_seed(1234)  # weights differ from the saved model's: loading must overwrite all of them
        model, task, family = factories[key]()
        return LoadedModel(key, model.eval(), task, FAMILIES[family])

    monkeypatch.setattr(bio, "_rebuild", fake)
    return factories


def quantized_lenet() -> nn.Module:
    model = nets.LeNet5().eval()
    conv0, conv1 = model.features[0], model.features[3]
    quantize_module_inplace(model, "features.0", rtn_weight(conv0.weight, [(4, 25, 25)]))  # per channel
    perm = torch.randperm(150)
    segs = [*rtn_segments(conv1.weight, [(3, 100, 32)], perm), random_codebook_segment(16, 50, 2, 25, 1)]
    qw = QuantizedWeight((16, 6, 5, 5), segs, perm)
    quantize_module_inplace(model, "features.3", qw)  # mixed widths + permutation + codebook
    fc1 = model.classifier[1]
    quantize_module_inplace(model, "classifier.1", rtn_weight(fc1.weight, [(2, 100, 64), (8, 300, 128)]))
    seg_of = (torch.arange(120) % 3 == 0).long()  # 80 columns at 5 bits, 40 at 3, each class in ascending order
    fc2 = rtn_weight(model.classifier[3].weight, [(5, 80, 7), (3, 40, 120)], torch.argsort(seg_of, stable=True))
    quantize_module_inplace(model, "classifier.3", fc2)  # a permutation stored as a segment map
    return model  # classifier.5 stays float


def lenet_factory():
    return nets.LeNet5(), Task.IMAGE, "small-net"


def test_round_trip_reproduces_outputs_exactly(tmp_path, rebuild):
    rebuild["lenet5-mnist"] = lenet_factory
    model = quantized_lenet()
    plan = {"features.0": {"bits": 4}}
    out = save_quantized(model, tmp_path / "ckpt", key="lenet5-mnist", method="rtn", plan=plan, extra={"seed": 0})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_quantized(out)
    assert loaded.task is Task.IMAGE and loaded.family.name == "small-net" and not loaded.module.training
    assert isinstance(loaded.module.features[0], QuantConv2d) and isinstance(loaded.module.classifier[1], QuantLinear)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))
    meta = loaded.meta
    assert meta["format"] == "bayesquant-packed" and meta["format_version"] == 2 and meta["key"] == "lenet5-mnist"
    assert meta["method"] == "rtn" and meta["plan"] == plan and meta["extra"] == {"seed": 0}
    assert set(meta["modules"]) == {"features.0", "features.3", "classifier.1", "classifier.3"}
    assert meta["file"]["bytes"] == (out / "model.safetensors").stat().st_size
    assert meta["size"] == size_report(out) == size_report(model) == size_report(loaded)
    rows = {r["module"]: r for r in meta["size"]["modules"]}
    assert rows["classifier.1"]["nominal_bits"] == pytest.approx((2 * 100 + 8 * 300) / 400)
    assert meta["modules"]["classifier.3"]["perm"] == "segments" and meta["modules"]["features.3"]["perm"] is True
    codes, grids, segmap = (80 * 5 + 40 * 3) * 84 / 8, 84 * (12 + 1) * 4, 120 / 8  # 12 groups of 7, one of 40
    assert rows["classifier.3"]["bytes"] == codes + grids + segmap
    assert meta["size"]["nominal_bits"] == pytest.approx(
        sum(r["nominal_bits"] * r["n_weights"] for r in rows.values()) / meta["size"]["n_quantized_weights"]
    )


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg), Task.CAUSAL_LM, "llama"


def test_tied_embeddings_survive_the_round_trip(tmp_path, rebuild):
    rebuild["tiny-llama"] = tiny_llama
    torch.manual_seed(0)
    model = tiny_llama()[0].eval()
    names = [n for n in FAMILIES["llama"].quantizable_modules(model)]
    assert len(names) == 14 and "lm_head" not in names
    for i, name in enumerate(names):
        w = model.get_submodule(name).weight
        perm = torch.randperm(w.shape[1]) if i % 2 else None
        quantize_module_inplace(model, name, rtn_weight(w, [(4, w.shape[1], 16)], perm))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    out = save_quantized(model, tmp_path / "llama", key="tiny-llama", method="rtn")
    loaded = load_quantized(out).module
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert size_report(loaded) == size_report(out) == size_report(model)  # the tied tensor counted once
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.fixture
def saved(tmp_path, rebuild):
    rebuild["lenet5-mnist"] = lenet_factory
    return save_quantized(quantized_lenet(), tmp_path / "ckpt", key="lenet5-mnist", method="rtn")


def test_truncated_file_is_detected(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelError, match=r"model\.safetensors: .*truncated.*re-create"):
        load_quantized(saved)


def test_flipped_byte_is_detected(saved):
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"model\.safetensors: sha256 .*re-create"):
        load_quantized(saved)


def test_missing_or_bad_config(saved, tmp_path):
    with pytest.raises(ModelError, match=r"config\.json: missing"):
        load_quantized(tmp_path / "nowhere")
    config = saved / "config.json"
    good = json.loads(config.read_text())
    config.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_quantized(saved)
    config.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(ModelError, match=r"format_version 99 is not supported \(this bayesquant reads 1 and 2\)"):
        load_quantized(saved)
    config.write_text(json.dumps({**good, "format": "gguf"}))
    with pytest.raises(ModelError, match="format 'gguf'"):
        load_quantized(saved)
    config.write_text(json.dumps({**good, "modules": {"features.9": good["modules"]["features.0"]}}))
    with pytest.raises(ModelError, match=r"'features\.9' does not exist"):
        load_quantized(saved)


def test_format_version_1_checkpoints_still_load(tmp_path, rebuild):
    # version 2 only added the segment map; a version-1 file (int16 permutations only) reads unchanged
    rebuild["lenet5-mnist"] = lenet_factory
    model = nets.LeNet5().eval()
    quantize_module_inplace(
        model, "features.3", rtn_weight(model.features[3].weight, [(3, 150, 32)], torch.randperm(150))
    )
    quantize_module_inplace(model, "classifier.3", rtn_weight(model.classifier[3].weight, [(5, 120, 7)]))
    out = save_quantized(model, tmp_path / "v1", key="lenet5-mnist", method="rtn")
    config = json.loads((out / "config.json").read_text())
    assert [spec["perm"] for spec in config["modules"].values()] == [True, False]
    (out / "config.json").write_text(json.dumps({**config, "format_version": 1}))
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_quantized(out).module(x), model(x))


def test_storable_bits_are_measured_from_the_file(tmp_path):
    """4-bit codes with one fp16 scale and zero per group of 64: 4 + 2·16/64 = 4.5 bits per weight."""
    model = nn.Sequential(nn.Linear(1536, 576))
    quantize_module_inplace(model, "0", rtn_weight(model[0].weight, [(4, 1536, 64)]))
    out = save_quantized(model, tmp_path / "big", key="none", method="rtn")
    report = size_report(out)
    assert report["n_quantized_weights"] == 576 * 1536
    assert report["nominal_bits"] == 4
    assert report["storable_bits"] == 4 + 2 * 16 / 64 == 4.5
    assert report["other_bytes"] == 576 * 4  # the float32 bias
    assert json.loads((out / "config.json").read_text())["size"] == report
    # a permutation costs 16 bits per input column (int16), measured too
    model = nn.Sequential(nn.Linear(1536, 576))
    quantize_module_inplace(model, "0", rtn_weight(model[0].weight, [(4, 1536, 64)], torch.randperm(1536)))
    with_perm = size_report(save_quantized(model, tmp_path / "perm", key="none", method="gptq"))
    assert with_perm["storable_bits"] == pytest.approx(4.5 + 16 * 1536 / (576 * 1536))
    assert math.isclose(with_perm["modules"][0]["bytes"], (4.5 * 576 * 1536 + 16 * 1536) / 8)


def test_save_refuses_bad_targets_and_inputs(tmp_path, saved):
    model = quantized_lenet()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a packed model"):
        save_quantized(model, foreign, key="lenet5-mnist", method="rtn")
    assert (foreign / "notes.txt").read_text() == "keep me"
    save_quantized(model, saved, key="lenet5-mnist", method="gptq")  # an earlier checkpoint is replaced
    assert load_quantized(saved).meta["method"] == "gptq"
    with pytest.raises(UserError, match="plan: must be JSON-serialisable"):
        save_quantized(model, tmp_path / "x", key="k", method="rtn", plan={"w": torch.ones(1)})
    with pytest.raises(UserError, match=r"no packed modules \(QuantLinear"):
        save_quantized(nets.LeNet5(), tmp_path / "y", key="k", method="rtn")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _own_cnn(seed: int) -> LoadedModel:
    torch.manual_seed(seed)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    net = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    return LoadedModel("my-cnn", net.eval(), Task.IMAGE, FAMILIES["small-net"], dataset="mnist")


def test_a_model_of_ones_own_quantizes_and_loads_back_into_its_architecture(tmp_path):
    from bayesquant.api import quantize
    from bayesquant.config import QuantizeConfig
    from bayesquant.models import load_model

    result = quantize(_own_cnn(0), QuantizeConfig(method="gptq", bits=3, calib="mnist:train", nsamples=32))
    out = result.save(tmp_path / "mine")
    with pytest.raises(ModelError, match=r"from 'my-cnn', which is not a zoo model.*load_quantized\(DIR, model="):
        load_model(out)
    with pytest.raises(UserError, match=r"model=Sequential: give a LoadedModel"):
        load_quantized(out, model=_own_cnn(1).module)
    again = load_quantized(out, model=_own_cnn(1))  # other float weights: every one of them must be replaced
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again.module(x), result.model.module(x), rtol=0, atol=0)
    assert again.meta["key"] == "my-cnn" and isinstance(again.module[4], QuantLinear)
