"""Image classification data: MNIST, Fashion-MNIST (IDX), scikit-learn's 8×8 digits; each model's input shape."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bayesquant.data.idx import IDX_FILES, locate, read_idx
from bayesquant.data.sources import find_dataset_dir
from bayesquant.errors import DataError

if TYPE_CHECKING:
    from bayesquant.data.folder import LazyImages

CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "digits": [str(i) for i in range(10)],
}


# (channels, height, width) a model trained on each data set takes
INPUT_SHAPES = {
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "ambiguous-mnist": (1, 28, 28),
    "digits": (1, 8, 8),
    "imagenet": (3, 224, 224),
}
NUM_CLASSES = {"imagenet": 1000}  # models whose class names are not listed


@dataclass
class ImageData:
    """Images as float32 in [0, 1], shape (N, C, H, W), with integer labels (N,) or None (unlabelled).

    `images` is a tensor, or for `images:DIR` a `LazyImages` that decodes the files a batch asks for. `indexed`:
    the labels are the model's class indices themselves (class folders named 0, 1, …), not positions in
    `classes`."""

    name: str
    split: str
    images: torch.Tensor | LazyImages
    labels: torch.Tensor | None
    classes: list[str]
    indexed: bool = False

    def __post_init__(self) -> None:
        if len(self.images) == 0:
            raise DataError(f"{self.name}:{self.split} is empty")
        if self.labels is not None and len(self.images) != len(self.labels):
            raise DataError(f"{self.name}:{self.split}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, n: int | None) -> ImageData:
        """The first `n` examples (all when `n` is None)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise DataError(f"subset size {n}: must be ≥ 1")
        images = self.images[:n] if isinstance(self.images, torch.Tensor) else self.images.head(n)
        labels = None if self.labels is None else self.labels[:n]
        return ImageData(self.name, self.split, images, labels, self.classes, self.indexed)

    def dataset(self) -> TensorDataset:
        if not isinstance(self.images, torch.Tensor) or self.labels is None:
            raise DataError(f"{self.name}:{self.split}: training needs labelled images held in memory (a NAME:SPLIT)")
        return TensorDataset(self.images, self.labels)

    def loader(self, batch_size: int = 256, shuffle: bool = False, seed: int = 0) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(self.dataset(), batch_size=batch_size, shuffle=shuffle, generator=gen)


def to_input_shape(images: torch.Tensor, shape: tuple[int, int, int] | None) -> torch.Tensor:
    """A batch (N, C, H, W) in [0, 1] brought to a model's (channels, height, width): grey → RGB by repeating the
    channel, RGB → grey by luminance (ITU-R 601), a new size by bilinear resampling (antialiased when it shrinks)."""
    if shape is None or tuple(images.shape[1:]) == tuple(shape):
        return images
    channels, height, width = shape
    if images.shape[1] not in (1, 3) or channels not in (1, 3):
        raise DataError(f"images with {images.shape[1]} channels cannot feed a model that takes {channels}")
    if images.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
        images = (images * weights).sum(1, keepdim=True)
    if tuple(images.shape[2:]) != (height, width):
        shrink = images.shape[2] > height or images.shape[3] > width
        images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
    if images.shape[1] == 1 and channels == 3:  # after resizing: one channel to resample, not three
        images = images.expand(-1, 3, -1, -1)
    return images


def load_idx_images(name: str, split: str, root: str | Path | None = None, download: bool = True) -> ImageData:
    """MNIST or Fashion-MNIST `split` ("train" | "test"), verified against the known checksums."""
    if split not in ("train", "test"):
        raise DataError(f"{name}:{split}: unknown split; valid: train, test")
    directory = find_dataset_dir(name, root, download=download)
    specs = IDX_FILES[name]
    arrays = []
    for part in ("images", "labels"):
        spec = specs[f"{split}-{part}"]
        path = locate(directory, spec)
        if path is None:  # pragma: no cover - find_dataset_dir checked this
            raise DataError(f"{directory}: {spec.name} disappeared")
        arrays.append(read_idx(path, spec))
    images, labels = arrays
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageData(name, split, x, y, CLASSES[name])


def load_digits(split: str, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 8×8 digits (1,797 images), split deterministically; values scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    if split not in ("train", "test"):
        raise DataError(f"digits:{split}: unknown split; valid: train, test")
    bunch = sk_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(y) * test_fraction)
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return ImageData("digits", split, x[idx], y[idx], CLASSES["digits"])
