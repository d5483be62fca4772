"""Image classification data: MNIST, Fashion-MNIST (IDX) and scikit-learn's 8×8 digits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from bayesquant.data.idx import IDX_FILES, locate, read_idx
from bayesquant.data.sources import find_dataset_dir
from bayesquant.errors import DataError

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


@dataclass
class ImageData:
    """Images as float32 in [0, 1], shape (N, C, H, W), with integer labels (N,)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if len(self.images) == 0:
            raise DataError(f"{self.name}:{self.split} is empty")
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.name}:{self.split}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> ImageData:
        """The first `n` examples (all when `n` is None)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise DataError(f"subset size {n}: must be ≥ 1")
        return ImageData(self.name, self.split, self.images[:n], self.labels[:n], self.classes)

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.images, self.labels)

    def loader(self, batch_size: int = 256, shuffle: bool = False, seed: int = 0) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(self.dataset(), batch_size=batch_size, shuffle=shuffle, generator=gen)


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
