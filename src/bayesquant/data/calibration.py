"""Calibration batches for a model: (args, kwargs) of its forward call, sampled reproducibly."""

from __future__ import annotations

from typing import Any

import torch

from bayesquant.data.images import ImageData
from bayesquant.data.specs import load_dataset
from bayesquant.data.text import TextData, calibration_windows, tokenize
from bayesquant.errors import DataError

DEFAULT_CALIB = {"causal_lm": "bbc-news:train", "text_classification": "bbc-news:train"}
DEFAULT_NSAMPLES = {"causal_lm": 64, "image_classification": 1024, "text_classification": 128}


def calibration_batches(
    loaded: Any, spec: str | None = None, nsamples: int | None = None, seq_len: int = 512, seed: int = 0
) -> list[tuple[tuple, dict]]:
    """Model inputs for calibration. Language models: `nsamples` random windows of `seq_len` tokens (GPTQ's
    sampling), 4 per batch. Image classifiers: `nsamples` random training images, 256 per batch. Text
    classifiers: `nsamples` random articles, 16 per batch, truncated to the model's length."""
    task = loaded.task.value
    spec = spec or DEFAULT_CALIB.get(task) or f"{loaded.dataset}:train"
    n = nsamples or DEFAULT_NSAMPLES.get(task, 128)
    data = load_dataset(spec)
    if task == "causal_lm":
        if not isinstance(data, TextData):
            raise DataError(f"--calib {spec}: a language model calibrates on text (bbc-news:train, text:PATH)")
        windows = calibration_windows(tokenize(loaded.tokenizer, data.joined()), n, seq_len, seed)
        return [((), {"input_ids": windows[i : i + 4], "use_cache": False}) for i in range(0, n, 4)]
    gen = torch.Generator().manual_seed(seed)
    if isinstance(data, ImageData):
        if task != "image_classification":
            raise DataError(f"--calib {spec}: {loaded.key} does not take images")
        idx = torch.randperm(len(data), generator=gen)[:n]
        images = data.images[idx]
        return [((images[i : i + 256],), {}) for i in range(0, len(images), 256)]
    if task != "text_classification":
        raise DataError(f"--calib {spec}: {loaded.key} does not take text")
    idx = torch.randperm(len(data), generator=gen)[:n].tolist()
    texts = [data.texts[i] for i in idx]
    batches = []
    for i in range(0, len(texts), 16):
        enc = loaded.tokenizer(
            texts[i : i + 16], truncation=True, max_length=loaded.max_length or 512, padding=True, return_tensors="pt"
        )
        batches.append(((enc["input_ids"], enc["attention_mask"]), {}))
    return batches
