"""Shared fixtures. Nothing here downloads: the suite runs with BAYESQUANT_OFFLINE=1 and HF_HUB_OFFLINE=1."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["BAYESQUANT_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
# Use the data sets beside the repository (as CI does) unless the user chose a location.
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if "BAYESQUANT_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["BAYESQUANT_DATA"] = str(_SHARED)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file, gzipped when `compress`."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A private, empty user cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BAYESQUANT_CACHE", str(cache))
    return cache


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
