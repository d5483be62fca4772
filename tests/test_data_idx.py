from __future__ import annotations

import gzip

import numpy as np
import pytest

from bayesquant.data import find_dataset_dir, load_dataset, load_idx_images
from bayesquant.data.idx import IDX_FILES, IdxFile, parse_idx, read_idx
from bayesquant.data.sources import candidate_dirs
from bayesquant.errors import DataError
from tests.conftest import write_idx


def test_parse_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (True, False):
        path = write_idx(tmp_path / f"x{compress}", arr, compress)
        np.testing.assert_array_equal(read_idx(path), arr)


def test_checksum_mismatch_names_the_file(tmp_path):
    arr = np.zeros((2, 2), dtype=np.uint8)
    path = write_idx(tmp_path / "labels.gz", arr)
    data = gzip.decompress(path.read_bytes())
    with pytest.raises(DataError, match=r"labels\.gz: sha256"):
        read_idx(path, IdxFile("labels", len(data), "0" * 64))
    with pytest.raises(DataError, match=r"labels\.gz: .* bytes after decompression, expected 999"):
        read_idx(path, IdxFile("labels", 999, "0" * 64))


def test_truncated_gzip_is_an_error_not_a_short_array(tmp_path):
    path = write_idx(tmp_path / "img.gz", np.ones((10, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"img\.gz: cannot be read or decompressed"):
        read_idx(path)


def test_header_body_mismatch_and_bad_magic():
    good = bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])
    np.testing.assert_array_equal(parse_idx(good), [1, 2, 3])
    with pytest.raises(DataError, match="header says 3"):
        parse_idx(good[:-1])
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x01\x02\x03\x04")


def test_lookup_order_explicit_then_env_then_cache(tmp_path, monkeypatch, isolated_cache):
    monkeypatch.setenv("BAYESQUANT_DATA", str(tmp_path / "env"))
    dirs = candidate_dirs("mnist", tmp_path / "explicit")
    assert dirs[:4] == [
        tmp_path / "explicit" / "mnist",
        tmp_path / "explicit",
        tmp_path / "env" / "mnist",
        isolated_cache / "data" / "mnist",
    ]
    assert dirs[-1].as_posix() == "/usr/share/datasets/mnist"


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch, isolated_cache):
    monkeypatch.setenv("BAYESQUANT_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr("bayesquant.data.sources.SYSTEM_DIRS", {})
    with pytest.raises(DataError, match=r"mnist not found .* run `bayesquant data fetch mnist`"):
        find_dataset_dir("mnist")


def _fake_dataset(directory, n_test=5, corrupt=None):
    directory.mkdir(parents=True)
    for key, spec in IDX_FILES["mnist"].items():
        n = n_test if key.startswith("test") else 7
        arr = np.zeros((n, 28, 28) if "images" in key else (n,), dtype=np.uint8)
        path = write_idx(directory / f"{spec.name}.gz", arr)
        if key == corrupt:
            path.write_bytes(path.read_bytes()[:10])


def test_corrupt_file_found_by_lookup_is_reported(tmp_path, monkeypatch, isolated_cache):
    _fake_dataset(tmp_path / "d" / "mnist", corrupt="test-images")
    monkeypatch.setenv("BAYESQUANT_DATA", str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_idx_images("mnist", "test")


def test_wrong_content_with_valid_format_fails_checksum(tmp_path, monkeypatch, isolated_cache):
    _fake_dataset(tmp_path / "d" / "mnist")
    monkeypatch.setenv("BAYESQUANT_DATA", str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"bytes after decompression, expected 7840016"):
        load_idx_images("mnist", "test")


@pytest.mark.integration
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_idx_data_loads_and_verifies(name):
    test = load_idx_images(name, "test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert test.images.dtype.is_floating_point and 0.0 <= float(test.images.min()) < float(test.images.max()) <= 1.0
    assert sorted(test.labels.unique().tolist()) == list(range(10))
    assert (test.labels.bincount() == 1000).all() if name == "fashion-mnist" else test.labels.bincount().min() > 800


@pytest.mark.integration
def test_mnist_loader_batches():
    data = load_dataset("mnist:test").subset(300)
    x, y = next(iter(data.loader(batch_size=128)))
    assert x.shape == (128, 1, 28, 28) and y.shape == (128,)
    assert len(data) == 300


def test_digits_split_is_deterministic_and_disjoint():
    a, b = load_dataset("digits:train"), load_dataset("digits:test")
    assert len(a) + len(b) == 1797 and len(b) == 359
    again = load_dataset("digits:test")
    assert (again.labels == b.labels).all()
