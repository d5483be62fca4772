"""Data sets: MNIST, Fashion-MNIST, scikit-learn digits, BBC News, any text file, labelled texts (JSON Lines);
token windows."""

from bayesquant.data.images import ImageData, load_digits, load_idx_images
from bayesquant.data.sources import fetch, find_dataset_dir
from bayesquant.data.specs import DataSpec, load_dataset
from bayesquant.data.text import (
    TextData,
    calibration_windows,
    eval_windows,
    load_bbc_news,
    load_jsonl,
    load_text_file,
    tokenize,
)

__all__ = [
    "DataSpec",
    "ImageData",
    "TextData",
    "calibration_windows",
    "eval_windows",
    "fetch",
    "find_dataset_dir",
    "load_bbc_news",
    "load_dataset",
    "load_digits",
    "load_idx_images",
    "load_jsonl",
    "load_text_file",
    "tokenize",
]
