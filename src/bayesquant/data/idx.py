"""Read IDX files (the MNIST format), verifying their content against known checksums."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bayesquant.errors import DataError


@dataclass(frozen=True)
class IdxFile:
    """One expected IDX file: its canonical name and the size and sha256 of its decompressed bytes."""

    name: str  # e.g. "train-images-idx3-ubyte" (stored as NAME or NAME.gz)
    nbytes: int
    sha256: str


# Checksums of the decompressed bytes (the .gz bytes differ between mirrors; the content does not).
IDX_FILES: dict[str, dict[str, IdxFile]] = {
    "mnist": {
        "train-images": IdxFile(
            "train-images-idx3-ubyte",
            47040016,
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        "train-labels": IdxFile(
            "train-labels-idx1-ubyte",
            60008,
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        "test-images": IdxFile(
            "t10k-images-idx3-ubyte",
            7840016,
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        "test-labels": IdxFile(
            "t10k-labels-idx1-ubyte",
            10008,
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    },
    "fashion-mnist": {
        "train-images": IdxFile(
            "train-images-idx3-ubyte",
            47040016,
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        "train-labels": IdxFile(
            "train-labels-idx1-ubyte",
            60008,
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        "test-images": IdxFile(
            "t10k-images-idx3-ubyte",
            7840016,
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        "test-labels": IdxFile(
            "t10k-labels-idx1-ubyte",
            10008,
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    },
}

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def locate(directory: Path, spec: IdxFile) -> Path | None:
    """The file for `spec` in `directory` (gzipped or not), or None."""
    for candidate in (directory / f"{spec.name}.gz", directory / spec.name):
        if candidate.is_file():
            return candidate
    return None


def read_bytes(path: Path) -> bytes:
    """The decompressed content of `path` (gzip is detected by its magic number, not the suffix)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot be read or decompressed ({exc}); delete it and fetch it again") from None


def verify(path: Path, data: bytes, spec: IdxFile | None) -> None:
    """Raise a `DataError` naming `path` if `data` is not the expected content."""
    if spec is None:
        return
    fix = "delete it and run `bayesquant data fetch` to obtain a good copy"
    if len(data) != spec.nbytes:
        raise DataError(
            f"{path}: {len(data)} bytes after decompression, expected {spec.nbytes} (truncated or corrupt); {fix}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise DataError(f"{path}: sha256 {digest[:16]}… does not match the expected {spec.sha256[:16]}…; {fix}")


def parse_idx(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array (header: two zero bytes, dtype code, number of dims, big-endian sizes)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header is truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: IDX body has {len(data) - header} bytes, its header says {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: Path, spec: IdxFile | None = None) -> np.ndarray:
    """Read and verify one IDX file (plain or gzipped)."""
    data = read_bytes(path)
    verify(path, data, spec)
    return parse_idx(data, path)
