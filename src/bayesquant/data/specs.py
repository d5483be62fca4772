"""Data SPECs (`NAME:SPLIT`, `text:PATH`, `jsonl:PATH` or `images:DIR`) → data objects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bayesquant.data.images import ImageData, load_digits, load_idx_images
from bayesquant.data.text import TextData, load_bbc_news, load_jsonl, load_text_file
from bayesquant.errors import DataError

SPLITS = {
    "mnist": ("train", "test"),
    "fashion-mnist": ("train", "test"),
    "digits": ("train", "test"),
    "bbc-news": ("train", "test", "all"),
    "fortunes": ("train", "test", "all"),  # off-domain English (Debian's fortunes; `data fetch fortunes`)
    "ambiguous-mnist": ("train", "test"),  # generated on first use and cached (docs/methods.md, Dirty-MNIST)
    "text": (),  # text:PATH
    "jsonl": (),  # jsonl:PATH, labelled texts of the user's own (bayesquant.data.text.load_jsonl)
    "images": (),  # images:DIR, a folder of the user's own images (bayesquant.data.folder)
}


@dataclass(frozen=True)
class DataSpec:
    """A parsed SPEC: `name` and `split` (for `text` and `jsonl`, `split` is the file path; for `images`, the
    folder)."""

    name: str
    split: str

    @classmethod
    def parse(cls, spec: str) -> DataSpec:
        name, sep, split = spec.partition(":")
        named = [f"{n}:{'|'.join(s)}" for n, s in SPLITS.items() if s]
        valid = ", ".join([*named, "text:PATH", "jsonl:PATH", "images:DIR"])
        if not sep or not split or name not in SPLITS:
            raise DataError(f"--data {spec!r}: unknown SPEC; valid: {valid}")
        if SPLITS[name] and split not in SPLITS[name]:
            raise DataError(f"--data {spec!r}: unknown split {split!r}; valid: {', '.join(SPLITS[name])}")
        return cls(name, split)

    def __str__(self) -> str:
        return f"{self.name}:{self.split}"


def load_dataset(spec: str | DataSpec, root: str | Path | None = None) -> ImageData | TextData:
    """Load a SPEC such as `mnist:test`, `bbc-news:train`, `text:notes.txt.gz`, `jsonl:reviews.jsonl` or
    `images:photos/val`.

    >>> data = load_dataset("digits:test")
    >>> data.images.shape
    torch.Size([359, 1, 8, 8])
    """
    s = spec if isinstance(spec, DataSpec) else DataSpec.parse(spec)
    if s.name in ("mnist", "fashion-mnist"):
        return load_idx_images(s.name, s.split, root)
    if s.name == "digits":
        return load_digits(s.split)
    if s.name == "bbc-news":
        return load_bbc_news(s.split)
    if s.name == "ambiguous-mnist":  # the aleatoric part of Dirty-MNIST, labels drawn from the ensemble's mean
        from bayesquant.data.dirty_mnist import ambiguous_mnist

        amb = ambiguous_mnist(root=root)
        return amb.train if s.split == "train" else amb.test
    if s.name == "fortunes":
        from bayesquant.data.fortunes import load_fortunes

        return load_fortunes(s.split)
    if s.name == "images":
        from bayesquant.data.folder import load_image_folder

        return load_image_folder(s.split)
    if s.name == "jsonl":
        return load_jsonl(s.split)
    return load_text_file(s.split)
