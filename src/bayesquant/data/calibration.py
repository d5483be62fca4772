"""Calibration batches for a model, sampled reproducibly: model inputs for the layer-by-layer solvers
(`calibration_batches`), inputs with targets for fitting posteriors (`labelled_batches`)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch

from bayesquant.data.images import INPUT_SHAPES, NUM_CLASSES, ImageData, to_input_shape
from bayesquant.data.specs import load_dataset
from bayesquant.data.text import TextData, calibration_windows, tokenize
from bayesquant.errors import DataError
from bayesquant.nn.placement import to_model

log = logging.getLogger(__name__)

DEFAULT_CALIB = {
    "causal_lm": "bbc-news:train",
    "text_classification": "bbc-news:train",
    "text_embedding": "bbc-news:train",
    "image_classification": None,  # the model's own training split
}
DEFAULT_NSAMPLES = {"causal_lm": 64, "image_classification": 1024, "text_classification": 128, "text_embedding": 128}
DEFAULT_LABELLED_BATCH = {"causal_lm": 1, "image_classification": 128, "text_classification": 16, "text_embedding": 16}
LARGE_IMAGE_BATCH = 16
TEXT_TASKS = ("text_classification", "text_embedding")


class Batches:
    """A re-iterable list of batches; with `shuffle`, each pass visits them in a new seeded order."""

    def __init__(
        self, batches: list, shuffle: bool = False, seed: int = 0, labels_valid: bool = True, n_total: int | None = None
    ) -> None:
        self.batches, self.shuffle, self.labels_valid = batches, shuffle, labels_valid
        self.n_total = n_total  # examples in the whole SPEC the batches were drawn from
        self._gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Any:
        return self.batches[i]

    def __iter__(self):
        order = torch.randperm(len(self.batches), generator=self._gen).tolist() if self.shuffle else range(len(self))
        return (self.batches[i] for i in order)


def _spec(loaded: Any, spec: str | None) -> str:
    if spec:
        return spec
    default = DEFAULT_CALIB.get(loaded.task.value)
    if default:
        return default
    if loaded.dataset == "imagenet":
        raise DataError(
            f"--calib: {loaded.key} was trained on ImageNet, which cannot be had offline; give a folder of "
            "images, --calib images:DIR (DIR/<class>/*.jpg or DIR/*.jpg), or a proxy such as --calib "
            "fashion-mnist:train (grey images resized to 224×224 RGB)"
        )
    return f"{loaded.dataset}:train"


def _images(loaded: Any, images: torch.Tensor) -> torch.Tensor:
    """Images as the model takes them (`to_input_shape`): e.g. grey 28×28 proxies as 3×224×224 RGB for ImageNet
    models, or a folder's 224×224 RGB crops as grey 28×28 for the MNIST nets."""
    return to_input_shape(images, INPUT_SHAPES.get(loaded.dataset))


def align_labels(loaded: Any, data: ImageData | TextData, strict: bool = True) -> ImageData | TextData:
    """`data` with labelled texts' class names (a JSON Lines file's, BBC News') turned into `loaded`'s class
    indices, looked up by name, so the order in which the model lists its classes does not matter. Images, data
    labelled by index, and a model without class names are returned as they are. A class name that is not one of
    the model's is an error, or with `strict=False` (calibration, where labels are optional) leaves `data` as it is
    and `labels_fit` false."""
    if not isinstance(data, TextData) or data.indexed or data.labels is None or not loaded.classes:
        return data
    if data.classes == list(loaded.classes):
        return data  # already in the model's order (minilm-bbc on bbc-news)
    unknown = [name for name in data.classes if name not in loaded.classes]
    if unknown and not strict:
        return data
    if unknown:
        raise DataError(
            f"{data.name}:{data.split}: the labels {', '.join(map(repr, unknown[:5]))} are not classes of --model "
            f"{loaded.key} ({', '.join(loaded.classes)}); label each text with one of those names or with its index"
        )
    index = {name: i for i, name in enumerate(loaded.classes)}
    labels = torch.tensor([index[data.classes[j]] for j in data.labels.tolist()], dtype=torch.long)
    return replace(data, labels=labels, classes=list(loaded.classes), indexed=True)


def labels_fit(loaded: Any, data: ImageData | TextData) -> bool:
    """Whether `data`'s labels are `loaded`'s classes: its own data set, an image folder whose class folders
    name the model's class indices or are exactly as many as its classes, or texts labelled with the model's class
    indices (`align_labels` turns class names into those)."""
    if data.labels is None or loaded.task.value == "text_embedding":
        return False
    if data.name == loaded.dataset:
        return True
    if data.name != "images" and not getattr(data, "indexed", False):
        return False
    n_classes = len(loaded.classes) or NUM_CLASSES.get(loaded.dataset)
    if n_classes is None:
        return False
    if data.indexed:
        return int(data.labels.max()) < n_classes
    return len(data.classes) == n_classes


def check_pairs(loaded: Any, data: ImageData | TextData, flag: str) -> None:
    """Refuse sentence pairs (`TextData.pairs`) for a model that cannot read them: only a Hugging Face
    `…ForSequenceClassification` directory takes two segments, as it was fine-tuned. `flag` names the argument."""
    if not isinstance(data, TextData) or data.pairs is None:
        return
    spec = f'{flag} {data.name}:{data.split} gives sentence pairs ("text_pair")'
    if not hasattr(loaded.module, "pair_error"):
        raise DataError(f'{spec}, but {loaded.key} takes single texts; drop "text_pair"')
    if loaded.module.pair_error is not None:
        raise DataError(f"{spec}, but {loaded.module.pair_error}")


def encode(loaded: Any, data: TextData, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` of the texts at `index` (with their second texts, for sentence pairs),
    padded to the longest and truncated to the model's length (the longer segment first)."""
    texts, pairs = data.batch(index)
    length = loaded.max_length or 512
    enc = loaded.tokenizer(texts, pairs, truncation=True, max_length=length, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _load(loaded: Any, spec: str) -> ImageData | TextData:
    data = align_labels(loaded, load_dataset(spec), strict=False)
    task = loaded.task.value
    if task == "causal_lm" and not isinstance(data, TextData):
        raise DataError(f"--calib {spec}: a language model calibrates on text (bbc-news:train, text:PATH)")
    if isinstance(data, ImageData) and task != "image_classification":
        raise DataError(f"--calib {spec}: {loaded.key} does not take images")
    if isinstance(data, TextData) and task not in (*TEXT_TASKS, "causal_lm"):
        raise DataError(f"--calib {spec}: {loaded.key} does not take text")
    if task != "causal_lm":  # a language model reads pairs as running text (`TextData.joined`)
        check_pairs(loaded, data, "--calib")
    return data


def calibration_batches(
    loaded: Any, spec: str | None = None, nsamples: int | None = None, seq_len: int = 512, seed: int = 0
) -> list[tuple[tuple, dict]]:
    """Model inputs `(args, kwargs)` for calibration. Language models: `nsamples` random windows of `seq_len`
    tokens (GPTQ's sampling), one per batch as the reference feeds them (the float sums then follow its order:
    3-bit GPTQ on SmolLM2 moves by several percent with the order of summation alone). Image classifiers:
    `nsamples` random training images, 256 per batch. Text models: `nsamples` random articles, 16 per batch,
    truncated to the model's length. On the model's device, images in its floating dtype."""
    task = loaded.task.value
    spec = _spec(loaded, spec)
    n = nsamples or DEFAULT_NSAMPLES.get(task, 128)
    data = _load(loaded, spec)
    if task == "causal_lm":
        windows = calibration_windows(tokenize(loaded.tokenizer, data.joined()), n, seq_len, seed)
        return to_model([((), {"input_ids": windows[i : i + 1], "use_cache": False}) for i in range(n)], loaded.module)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    if isinstance(data, ImageData):
        images = data.images[idx]
        batches = [((_images(loaded, images[i : i + 256]),), {}) for i in range(0, len(images), 256)]
    else:
        order = idx.tolist()
        batches = [(encode(loaded, data, order[i : i + 16]), {}) for i in range(0, len(order), 16)]
    return to_model(batches, loaded.module)


def labelled_batches(
    loaded: Any,
    spec: str | None = None,
    nsamples: int | None = None,
    seq_len: int = 512,
    seed: int = 0,
    batch_size: int | None = None,
    shuffle: bool = False,
) -> Batches:
    """Batches with targets for fitting posteriors (the convention of `bayesquant.posterior.likelihood`):
    language models: LongTensors of token windows (B, seq_len), sampled as in `calibration_batches`; image
    classifiers: `(images, labels)`; text models: `(input_ids, attention_mask, labels)`. `nsamples` random
    examples of the SPEC (all of them when it exceeds its size); `n_total` is the SPEC's size in examples
    (non-overlapping windows for text). Where the SPEC's labels are not the model's
    classes (an encoder without a head, an ImageNet model on proxy images) the targets are zeros and
    `labels_valid` is False: only label-free curvatures may use them. On the model's device, images in its
    floating dtype."""
    task = loaded.task.value
    spec = _spec(loaded, spec)
    n = nsamples or DEFAULT_NSAMPLES.get(task, 128)
    bs = batch_size or DEFAULT_LABELLED_BATCH.get(task, 64)
    shape = INPUT_SHAPES.get(loaded.dataset)
    if batch_size is None and shape is not None and shape[1] * shape[2] > 64 * 64:
        bs = LARGE_IMAGE_BATCH  # ImageNet-sized inputs: a batch's graph for the backward passes takes gigabytes
    data = _load(loaded, spec)
    if task == "causal_lm":
        ids = tokenize(loaded.tokenizer, data.joined())
        windows = calibration_windows(ids, n, seq_len, seed)
        batches = to_model([windows[i : i + bs] for i in range(0, n, bs)], loaded.module)
        return Batches(batches, shuffle, seed, n_total=max(len(ids) // seq_len, n))
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    valid = labels_fit(loaded, data)
    if not valid and data.name == "images" and data.labels is not None:
        log.warning(
            "--calib images:%s: its %d class folders are not %s's classes (name them by class index, 0 … C−1, or "
            "give all C); its labels are not used",
            data.split,
            len(data.classes),
            loaded.key,
        )
    if not valid and data.name == "jsonl" and loaded.task.value != "text_embedding":
        log.warning("--calib jsonl:%s: its labels are not %s's classes; they are not used", data.split, loaded.key)
    labels = data.labels[idx] if valid else torch.zeros(len(idx), dtype=torch.long)
    if isinstance(data, ImageData):
        images = data.images[idx]
        batches = [(_images(loaded, images[i : i + bs]), labels[i : i + bs]) for i in range(0, len(idx), bs)]
    else:
        order = idx.tolist()
        batches = [(*encode(loaded, data, order[i : i + bs]), labels[i : i + bs]) for i in range(0, len(order), bs)]
    return Batches(to_model(batches, loaded.module), shuffle, seed, labels_valid=valid, n_total=len(data))
