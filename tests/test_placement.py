"""Inputs follow the model's device and floating dtype (DESIGN §5 rule 7), so a model kept in bfloat16 or
float64 calibrates, fits its posterior, quantizes and evaluates as it is."""

from __future__ import annotations

import torch
from torch import nn

from bayesquant.api import quantize
from bayesquant.config import QuantizeConfig
from bayesquant.data import load_dataset
from bayesquant.data.calibration import calibration_batches, labelled_batches
from bayesquant.eval.evaluate import predict_probs
from bayesquant.models import load_model
from bayesquant.nn.placement import placement, to_model


def test_to_model_casts_floating_tensors_only_and_keeps_what_is_already_placed():
    net = nn.Sequential(nn.Linear(3, 2)).to(torch.float64)
    assert placement(net) == (torch.device("cpu"), torch.float64)
    x, ids = torch.randn(4, 3), torch.arange(4)
    moved = to_model(((x,), {"input_ids": ids, "flag": True}), net)
    assert moved[0][0].dtype == torch.float64 and torch.equal(moved[0][0], x.double())
    assert moved[1]["input_ids"] is ids and moved[1]["flag"] is True  # integers keep their dtype
    same = torch.randn(2, 3, dtype=torch.float64)
    assert to_model([same], net)[0] is same
    assert placement(nn.ReLU()) == (torch.device("cpu"), torch.get_default_dtype())  # nothing to read


def test_calibration_and_labelled_batches_are_in_the_models_dtype():
    loaded = load_model("digit-cnn")
    loaded.module.to(torch.bfloat16)
    (args, _), *_ = calibration_batches(loaded, "mnist:train", nsamples=8)
    images, labels = labelled_batches(loaded, "mnist:train", nsamples=8)[0]
    assert args[0].dtype == images.dtype == torch.bfloat16
    assert labels.dtype == torch.long


def _quantized_probs(dtype: torch.dtype, cfg: QuantizeConfig, data) -> tuple[torch.Tensor, float]:
    loaded = load_model("digit-cnn")
    loaded.module.to(dtype)
    result = quantize(loaded, cfg)
    assert result.model.module.norm.mean.dtype == dtype  # the float parts stay as the user left them
    probs = predict_probs(result.model, data)[0]
    return probs, float((probs.argmax(1) == data.labels).float().mean())


def test_a_bfloat16_image_model_quantizes_with_gptq_close_to_float32():
    """Before inputs followed the model, a bfloat16 CNN failed at its first convolution (float input,
    bfloat16 bias)."""
    data = load_dataset("mnist:test").subset(200)
    cfg = QuantizeConfig(method="gptq", bits=4, nsamples=32)
    p32, acc32 = _quantized_probs(torch.float32, cfg, data)
    p16, acc16 = _quantized_probs(torch.bfloat16, cfg, data)
    assert acc16 >= 0.97 and abs(acc16 - acc32) <= 0.02
    assert (p32.argmax(1) == p16.argmax(1)).float().mean() >= 0.97


def test_a_bfloat16_image_model_fits_its_posterior_and_quantizes_with_bayesq():
    data = load_dataset("mnist:test").subset(200)
    cfg = QuantizeConfig(method="bayesq", bits=4, budget="storable", nsamples=32, posterior_nsamples=16)
    _, acc = _quantized_probs(torch.bfloat16, cfg, data)
    assert acc >= 0.97
