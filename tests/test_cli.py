from __future__ import annotations

import json

import numpy as np
import pytest

from bayesquant.cli import main
from bayesquant.data.idx import IDX_FILES
from tests.conftest import write_idx


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bayesquant: error:"), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0]


def test_unknown_model_key(capsys):
    code, _, err = run(capsys, "eval", "--model", "llama-9000", "--data", "mnist:test")
    assert_one_line_error(code, err, "llama-9000", "valid:", "smollm2-135m")


def test_unknown_spec_and_split(capsys):
    code, _, err = run(capsys, "eval", "--model", "digit-cnn", "--data", "cifar:test")
    assert_one_line_error(code, err, "cifar:test", "valid:")
    code, _, err = run(capsys, "eval", "--model", "digit-cnn", "--data", "mnist:dev")
    assert_one_line_error(code, err, "unknown split 'dev'")


def test_missing_data_says_how_to_get_it(capsys, tmp_path, monkeypatch, isolated_cache):
    monkeypatch.setenv("BAYESQUANT_DATA", str(tmp_path))
    monkeypatch.setattr("bayesquant.data.sources.SYSTEM_DIRS", {})
    code, _, err = run(capsys, "eval", "--model", "digit-cnn", "--data", "fashion-mnist:test")
    assert_one_line_error(code, err, "fashion-mnist not found", "bayesquant data fetch fashion-mnist")


def test_corrupt_idx_file(capsys, tmp_path, monkeypatch, isolated_cache):
    d = tmp_path / "mnist"
    d.mkdir()
    for key, spec in IDX_FILES["mnist"].items():
        write_idx(d / f"{spec.name}.gz", np.zeros((3, 28, 28) if "images" in key else (3,), np.uint8))
    bad = d / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-5])
    monkeypatch.setenv("BAYESQUANT_DATA", str(tmp_path))
    code, _, err = run(capsys, "eval", "--model", "digit-cnn", "--data", "mnist:test")
    assert_one_line_error(code, err, "t10k-images-idx3-ubyte.gz", "cannot be read or decompressed")


def test_empty_split(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    code, _, err = run(capsys, "eval", "--model", "smollm2-135m", "--data", f"text:{empty}")
    assert_one_line_error(code, err, "is empty")


def test_task_mismatch(capsys):
    code, _, err = run(capsys, "eval", "--model", "digit-cnn", "--data", "bbc-news:test")
    assert_one_line_error(code, err, "classifies images")


def test_bad_number_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", "digit-cnn", "--data", "mnist:test", "--max-examples", "0"])
    assert exc.value.code == 2


def test_debug_shows_the_traceback():
    from bayesquant.errors import UserError

    with pytest.raises(UserError):
        main(["--debug", "eval", "--model", "nope", "--data", "mnist:test"])


@pytest.mark.integration
def test_eval_writes_json_with_named_metrics(capsys, tmp_path):
    out = tmp_path / "r.json"
    code, stdout, _ = run(
        capsys, "eval", "--model", "digit-cnn", "--data", "mnist:test", "--max-examples", "200", "--json", str(out)
    )
    assert code == 0 and "accuracy" in stdout
    result = json.loads(out.read_text())
    for key in ("accuracy", "nll", "ece", "brier", "seconds", "peak_rss_gb"):
        assert key in result
    assert result["n"] == 200 and result["accuracy"] > 0.95


def test_models_list(capsys):
    code, out, _ = run(capsys, "models", "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["key", "task", "parameters", "source", "licence", "cached"]
    assert sum(1 for line in out.splitlines() if line.startswith(("lenet5-mnist", "digit-cnn"))) == 2


def test_bench_runs_a_bench_script_and_names_the_valid_ones(capsys):
    code, _, err = run(capsys, "bench", "no-such-bench")
    assert_one_line_error(code, err, "no-such-bench", "valid:", "ptq")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bayesquant.cli", "bench", "ptq", "--help"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert "--configs" in out and "--max-windows" in out


def test_fractional_bits_need_a_mixed_method(capsys):
    code, _, err = run(capsys, "quantize", "--model", "digit-cnn", "--bits", "3.5", "--out", "/nonexistent/x")
    assert_one_line_error(code, err, "--bits 3.5", "bayesq or baq")


@pytest.mark.integration
def test_quantize_with_distillation_records_it_and_rejects_bad_settings(capsys, tmp_path):
    code, _, err = run(capsys, "quantize", "--model", "digit-cnn", "--method", "rtn", "--bits", "3",
                       "--distill-steps", "4", "--distill-temperature", "-1", "--out", str(tmp_path / "x"))  # fmt: skip
    assert_one_line_error(code, err, "--distill-temperature -1.0", "≥ 0")
    code, _, err = run(capsys, "quantize", "--model", "digit-cnn", "--method", "rtn", "--bits", "3", "--nsamples",
                       "64", "--distill-steps", "4", "--out", str(tmp_path / "rtn"))  # fmt: skip
    assert code == 0, err
    extra = json.loads((tmp_path / "rtn" / "config.json").read_text())["extra"]
    assert extra["config"]["distill_steps"] == 4
    d = extra["distill"]
    assert d["steps"] == 4 and d["teacher_samples"] == 0 and d["loss_after"] <= d["loss_before"]


def test_quantize_scores_an_unlabelled_image_folder_against_the_float_model(capsys, tmp_path):
    """--eval images:DIR without class folders: agreement and KL with the float model; the folder is read before
    the quantization, so a missing one fails at once."""
    from PIL import Image

    code, _, err = run(capsys, "quantize", "--model", "digit-cnn", "--method", "rtn", "--bits", "2",
                       "--out", str(tmp_path / "q0"), "--eval", f"images:{tmp_path / 'nowhere'}")  # fmt: skip
    assert_one_line_error(code, err, "no such folder")
    assert not (tmp_path / "q0").exists()
    rng = np.random.default_rng(0)
    (tmp_path / "digits").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "digits" / f"{i}.png")
    code, stdout, err = run(capsys, "quantize", "--model", "digit-cnn", "--method", "rtn", "--bits", "2",
                            "--out", str(tmp_path / "q"), "--eval", f"images:{tmp_path / 'digits'}",
                            "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert "accuracy" not in result and result["n"] == 6 and "agreement" in stdout
    assert 0 <= result["agreement"] <= 1 and result["kl_to_reference"] > 0  # 2-bit RTN moves the predictions
