"""Where bayesquant keeps what it downloads, converts or trains."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """The user cache: `$BAYESQUANT_CACHE`, else `$XDG_CACHE_HOME/bayesquant`, else `~/.cache/bayesquant`."""
    if env := os.environ.get("BAYESQUANT_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "bayesquant"


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory next to `final`; rename it to `final` only if the block succeeds.

    An interrupted job leaves no half-written `final` behind (at most a `.tmp-*` directory that the next
    run ignores).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
        for f in tmp.iterdir():
            if f.is_file():
                f.chmod(0o644)
        if final.exists():
            _rmtree(final)
        tmp.rename(final)
    except BaseException:
        _rmtree(tmp)
        raise


@contextmanager
def atomic_file(final: Path, mode: str = "wb") -> Iterator:
    """Open a temporary file next to `final` for writing; rename it over `final` when the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".tmp-{final.name}-", dir=final.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.chmod(name, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(name, final)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def save_png(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically (no half-written image), then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    plt.close(fig)
    return path
