"""`bayesquant posterior` and `eval --posterior` end to end on real MNIST with the pretrained digit CNN."""

from __future__ import annotations

import json

import pytest
import torch

from bayesquant.data.calibration import labelled_batches
from bayesquant.models import load_model
from bayesquant.posterior import Posterior
from tests.test_cli import assert_one_line_error, run


@pytest.mark.integration
def test_labelled_batches_on_real_mnist():
    loaded = load_model("digit-cnn")
    batches = labelled_batches(loaded, "mnist:train", nsamples=300, batch_size=128)
    assert [len(b[1]) for b in batches] == [128, 128, 44] and batches.labels_valid and batches.n_total == 60000
    images, labels = batches[0]
    assert images.shape == (128, 1, 28, 28) and labels.dtype == torch.long
    with torch.no_grad():  # the labels are MNIST's own: the pretrained net agrees with nearly all of them
        acc = (loaded.module(images).argmax(1) == labels).float().mean()
    assert acc > 0.95
    again = labelled_batches(loaded, "mnist:train", nsamples=300, batch_size=128)
    assert torch.equal(again[2][0], batches[2][0])  # seeded
    shuffled = labelled_batches(loaded, "mnist:train", nsamples=300, batch_size=128, shuffle=True)
    first, second = [b[1][0] for b in shuffled], [b[1][0] for b in shuffled]
    assert sorted(map(int, first)) == sorted(map(int, second))


@pytest.mark.integration
def test_posterior_cli_writes_file_table_and_json(capsys, tmp_path):
    out, js = tmp_path / "dc.safetensors", tmp_path / "dc.json"
    code, stdout, _ = run(capsys, "posterior", "--model", "digit-cnn", "--method", "laplace-diag", "--calib",
                          "mnist:train", "--nsamples", "256", "--out", str(out), "--json", str(js))  # fmt: skip
    assert code == 0 and "|μ|/σ" in stdout
    post = Posterior.load(out)
    summary = json.loads(js.read_text())
    assert summary["meta"]["n_data"] == 60000 and summary["meta"]["n_seen"] == 256
    assert summary["prior_precision"] > 0 and len(summary["layers"]) == len(post.names) == 5
    assert out.with_suffix(".md").read_text().count("\n| conv_layers") == 3
    # the first conv layer is the best determined: its σ is far below the prior's
    lam = summary["prior_precision"]
    assert float(post.std("conv_layers.0").median()) < 0.5 * lam**-0.5
    code, _, err = run(capsys, "posterior", "--model", "digit-cnn", "--out", str(out))
    assert_one_line_error(code, err, "already exists", "--overwrite")
    # the Bayesian model built from the posterior runs with T samples
    code, stdout, _ = run(capsys, "eval", "--model", "digit-cnn", "--data", "mnist:test", "--max-examples", "100",
                          "--posterior", str(out), "--samples", "4", "--json", str(tmp_path / "e.json"))  # fmt: skip
    result = json.loads((tmp_path / "e.json").read_text())
    assert code == 0 and result["samples"] == 4 and result["mutual_information"] > 0


def test_posterior_cli_bad_input(capsys, tmp_path):
    code, _, err = run(capsys, "posterior", "--model", "digit-cnn", "--method", "bogus", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "bogus", "laplace-diag")
    code, _, err = run(capsys, "posterior", "--model", "digit-cnn", "--calib", "bbc-news:train",
                       "--out", str(tmp_path / "x"))  # fmt: skip
    assert_one_line_error(code, err, "bbc-news:train", "does not take text")
    code, _, err = run(capsys, "posterior", "--model", "digit-cnn", "--calib", "fashion-mnist:train",
                       "--nsamples", "8", "--out", str(tmp_path / "x"))  # fmt: skip
    assert_one_line_error(code, err, "no usable labels", "laplace-layerwise")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    code, _, err = run(capsys, "eval", "--model", "digit-cnn", "--data", "mnist:test", "--posterior", str(bad))
    assert_one_line_error(code, err, "--posterior", "unreadable or truncated")


def test_monte_carlo_draws_reach_the_fit_from_both_commands(capsys, tmp_path, monkeypatch):
    """`posterior --mc-samples S` and `quantize --posterior-mc-samples S` hand S to the Laplace fit."""
    import bayesquant.api as api
    from bayesquant.errors import UserError

    seen = {}
    real = api.estimate_posterior

    def spy(*args, **kwargs):
        seen["mc_samples"] = kwargs.get("mc_samples")
        if kwargs.get("mc_samples") == 5:  # the quantize call: stop before the allocation
            raise UserError("stopped after the posterior's arguments")
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "estimate_posterior", spy)  # the CLI and BayesQ look it up there
    code, _, err = run(capsys, "posterior", "--model", "digit-cnn", "--nsamples", "8", "--curvature", "ggn",
                       "--mc-samples", "3", "--out", str(tmp_path / "p.safetensors"))  # fmt: skip
    assert code == 0, err
    assert seen["mc_samples"] == 3 and Posterior.load(tmp_path / "p.safetensors").meta["ggn_mc_samples"] == 0
    code, _, err = run(capsys, "quantize", "--model", "digit-cnn", "--method", "bayesq", "--bits", "3",
                       "--posterior-mc-samples", "5", "--out", str(tmp_path / "q"))  # fmt: skip
    assert_one_line_error(code, err, "stopped after the posterior")
    assert seen["mc_samples"] == 5
    with pytest.raises(SystemExit) as exc:
        run(capsys, "posterior", "--model", "digit-cnn", "--mc-samples", "0", "--out", str(tmp_path / "x"))
    assert exc.value.code == 2 and "--mc-samples: 0 must be ≥ 1" in capsys.readouterr().err
    from bayesquant.config import QuantizeConfig

    with pytest.raises(UserError, match="--posterior-mc-samples 0"):
        QuantizeConfig(method="bayesq", bits=3, posterior_mc_samples=0)
