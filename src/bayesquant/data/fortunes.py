"""Off-domain English text: the `fortunes` collection of Debian (quotations and short prose on people, science,
politics, law, work, …), for checking that a quantized language model holds up away from its calibration
domain (BBC News). `bayesquant data fetch fortunes` takes the package from Debian's archive (`apt-get
download`, no root needed) and keeps the files below in the user cache; a user with the `fortune` program
installed also has them in /usr/share/games/fortunes.

Each file holds entries separated by lines with a single "%". Terminal overstriking (`_\\bX`, `X\\bX`) is
reduced to the printed character. Split: entry i (in the fixed order: the files below, then their order in
the file) is **test** when i % 10 == 0, train otherwise — the BBC News rule.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from bayesquant.data.text import TextData
from bayesquant.errors import DataError
from bayesquant.paths import atomic_dir, cache_dir

PACKAGE = "fortunes"
FILES = ("art", "education", "humorists", "law", "love", "medicine", "miscellaneous", "people", "platitudes",
         "politics", "science", "wisdom", "work")  # fmt: skip
SYSTEM_DIR = Path("/usr/share/games/fortunes")
_OVERSTRIKE = re.compile(r".\x08")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def candidate_dirs() -> list[Path]:
    dirs = [Path(env).expanduser() / PACKAGE] if (env := os.environ.get("BAYESQUANT_DATA")) else []
    return [*dirs, cache_dir() / "data" / PACKAGE, SYSTEM_DIR]


def find_dir() -> Path:
    for d in candidate_dirs():
        if all((d / f).is_file() for f in FILES):
            return d
    raise DataError(f"fortunes: not found in {', '.join(map(str, candidate_dirs()))}; run `bayesquant data fetch "
                    "fortunes` (Debian's archive, through apt-get)")  # fmt: skip


def entries(text: str) -> list[str]:
    """The entries of one fortune file, overstriking and control characters removed."""
    text = _CONTROL.sub("", _OVERSTRIKE.sub("", text))
    parts = re.split(r"^%\s*$", text, flags=re.MULTILINE)
    return [p.strip("\n") for p in parts if p.strip()]


def load_fortunes(split: str, directory: str | Path | None = None) -> TextData:
    """The entries of `split` (train | test | all) as documents; `joined()` is the text for perplexity."""
    if split not in ("train", "test", "all"):
        raise DataError(f"fortunes:{split}: unknown split; valid: train, test, all")
    root = Path(directory) if directory is not None else find_dir()
    items = [e for f in FILES for e in entries((root / f).read_text(encoding="utf-8", errors="ignore"))]
    texts = [e for i, e in enumerate(items) if split == "all" or (i % 10 == 0) == (split == "test")]
    return TextData(PACKAGE, split, texts)


def fingerprint(data: TextData) -> str:
    """sha256 prefix of the joined text (reported next to results: Debian may revise the package)."""
    return hashlib.sha256(data.joined().encode("utf-8")).hexdigest()[:16]


def fetch(force: bool = False) -> Path:
    """Make the files available in the user cache (already present → `apt-get download fortunes`)."""
    if not force:
        try:
            return find_dir()
        except DataError:
            pass
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataError("fetching fortunes needs apt-get and dpkg-deb (Debian/Ubuntu); or copy the files "
                        f"{', '.join(FILES)} into $BAYESQUANT_DATA/fortunes")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        got = subprocess.run(["apt-get", "download", PACKAGE], cwd=work, capture_output=True)
        if got.returncode != 0 and os.geteuid() == 0:  # package lists may be missing on a fresh machine
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            got = subprocess.run(["apt-get", "download", PACKAGE], cwd=work, capture_output=True)
        debs = list(work.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise DataError(f"`apt-get download {PACKAGE}` failed: {got.stderr.decode()[-300:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "x")], check=True, capture_output=True)
        src = work / "x" / "usr/share/games/fortunes"
        target = cache_dir() / "data" / PACKAGE
        with atomic_dir(target) as tmp_dir:
            for f in FILES:
                shutil.copyfile(src / f, Path(tmp_dir) / f)
    return target
