from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bayesquant.data import load_dataset
from bayesquant.errors import ModelError, UserError
from bayesquant.eval import evaluate
from bayesquant.models import FAMILIES, ZOO, list_models, load_model, nets
from bayesquant.models.train import ImageRecipe, train_image_classifier
from bayesquant.models.zoo import _save_trained


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(UserError, match=r"--model 'gpt-5': unknown model; valid: digit-cnn, .*smollm2-135m"):
        load_model("gpt-5")


def test_zoo_has_every_promised_key_and_lists_them():
    keys = {
        "smollm2-135m",
        "minilm-l6",
        "digit-cnn",
        "efficientnet-lite0",
        "lenet5-mnist",
        "resnet-fashion",
        "minilm-bbc",
        "mlp-2x100",
    }
    assert set(ZOO) == keys
    rows = {r["key"]: r for r in list_models()}
    assert rows["digit-cnn"]["parameters"] == 390_410
    assert rows["lenet5-mnist"]["parameters"] == 61_706  # the 6-16-120-84 LeNet-5
    assert rows["mlp-2x100"]["parameters"] == 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    assert all(r["licence"] and r["source"] for r in rows.values())


@pytest.mark.parametrize(
    "factory, family, n_quant, n_blocks",
    [
        (nets.LeNet5, "small-net", 5, 1),
        (nets.DigitCNN, "small-net", 5, 1),
        (nets.MLP, "small-net", 3, 1),
        (nets.SmallResNet, "resnet", 1 + 3 * 2 + 2 + 1, 5),  # stem, 3 blocks (2 with 1×1 shortcuts), head
    ],
)
def test_families_describe_quantizable_modules_and_blocks(factory, family, n_quant, n_blocks):
    model = factory()
    fam = FAMILIES[family]
    mods = fam.quantizable_modules(model)
    assert len(mods) == n_quant
    assert all(isinstance(m, nn.Linear | nn.Conv2d) for m in mods.values())
    assert len(fam.block_list(model)) == n_blocks


def test_resnet_forward_shape_and_normalisation_is_inside():
    model = nets.SmallResNet().eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert "net.0.norm.mean" not in model.state_dict()  # constants are buffers, not saved weights


def test_training_loop_learns_digits_and_saved_dir_loads(tmp_path, isolated_cache):
    train, test = load_dataset("digits:train"), load_dataset("digits:test")
    model = nets.MLP(in_features=64, hidden=(32,))
    stats = train_image_classifier(model, train, ImageRecipe(epochs=8, lr=1e-2, batch_size=64))
    acc = (model(test.images).argmax(-1) == test.labels).double().mean()
    assert acc > 0.9 and stats["final_loss"] < 0.5

    lenet = nets.LeNet5().eval()
    out = _save_trained("lenet5-mnist", lenet, {"test": {"accuracy": 0.0}})
    meta = json.loads((out / "meta.json").read_text())
    assert meta["key"] == "lenet5-mnist" and not list(out.parent.glob(".tmp-*"))
    loaded = load_model(out)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded.module(x), lenet(x))


def test_directory_that_does_not_fit_the_model_is_an_error(tmp_path, isolated_cache):
    out = _save_trained("lenet5-mnist", nets.MLP(), {})
    with pytest.raises(ModelError, match="does not fit lenet5-mnist"):
        load_model(out)


@pytest.mark.integration
def test_digit_cnn_on_real_mnist():
    result = evaluate("digit-cnn", "mnist:test", max_examples=500)
    assert result["n"] == 500 and result["accuracy"] > 0.97
    assert 0 <= result["ece"] < 0.05 and result["nll"] < 0.2


@pytest.mark.integration
def test_efficientnet_loads_and_runs():
    lm = load_model("efficientnet-lite0")
    assert lm.num_parameters == pytest.approx(4.65e6, rel=0.01)
    with torch.no_grad():
        out = lm.module(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert len(lm.family.block_list(lm.module)) == 16


@pytest.mark.integration
def test_minilm_encoder_is_bert_with_six_blocks():
    lm = load_model("minilm-l6")
    assert len(lm.family.block_list(lm.module)) == 6
    assert len(lm.family.quantizable_modules(lm.module)) == 6 * 6
    enc = lm.tokenizer(["a small test"], return_tensors="pt")
    with torch.no_grad():
        h = lm.module(**enc).last_hidden_state
    assert h.shape[-1] == 384 and torch.isfinite(h).all()


@pytest.mark.integration
def test_smollm2_two_decoder_layers_on_real_text():
    """The real SmolLM2 (converted from its GGUF and cached) cut to two decoder layers, on BBC text."""
    lm = load_model("smollm2-135m")
    assert lm.num_parameters == 134_515_008
    text = load_dataset("bbc-news:test").texts[0]
    ids = lm.tokenizer(text, return_tensors="pt").input_ids[:, :64]
    with torch.no_grad():
        full = lm.module(input_ids=ids, labels=ids, output_hidden_states=True)
    assert 1.0 < float(full.loss) < 5.0  # a real LM on real English text (perplexity ≈ 29 over 512 tokens)
    model = lm.module
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    assert len(lm.family.quantizable_modules(model)) == 14
    with torch.no_grad():
        cut = model(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(cut.hidden_states[1], full.hidden_states[1])
    # the last entry of hidden_states is after the final norm: compare the pre-norm output of layer 2
    assert torch.isfinite(cut.logits).all()


@pytest.mark.integration
def test_smollm2_calibration_is_the_references_windows_one_per_forward():
    """GPTQ's protocol on SmolLM2 (DATA.md): windows drawn from the joined, tokenized `bbc-news:train` with
    random.seed(0), and fed one per forward pass as the reference does."""
    from bayesquant.data.calibration import calibration_batches
    from bayesquant.data.text import tokenize

    lm = load_model("smollm2-135m")
    ids = tokenize(lm.tokenizer, load_dataset("bbc-news:train").joined())
    assert ids.numel() == 1_031_526
    batches = calibration_batches(lm, nsamples=5)
    for (args, kwargs), start in zip(batches, [885440, 403958, 794772, 933488, 441001], strict=True):
        assert args == () and kwargs["use_cache"] is False
        assert torch.equal(kwargs["input_ids"], ids[start : start + 512].unsqueeze(0))
