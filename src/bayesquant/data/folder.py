"""A folder of the user's own images (`images:DIR`), in torchvision's ImageFolder layout.

`DIR/<class>/<image>` gives labelled images: the label of a class folder is its name when every class folder is
named by an integer (`0/`, `1/`, …, the model's class index), else its position among the class folders sorted
by name (ImageNet's synset folders `n01440764/` … sorted give the usual 1,000 class indices). Images directly in
`DIR` with no class folders are unlabelled: enough for calibration, not for accuracy. Files are decoded when a
batch is asked for, with ImageNet's evaluation transform: RGB, shorter side resized to 256 (bilinear,
antialiased), centre crop 224 × 224, values in [0, 1] (the model normalises them itself).

>>> data = load_image_folder("photos")  # doctest: +SKIP
>>> data.images[:8].shape  # doctest: +SKIP
torch.Size([8, 3, 224, 224])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bayesquant.data.images import ImageData
from bayesquant.errors import DataError

SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
RESIZE, CROP = 256, 224


def decode(path: Path, resize: int = RESIZE, crop: int = CROP) -> torch.Tensor:
    """One image file → float32 (3, crop, crop) in [0, 1]: shorter side to `resize`, then the centre crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}); remove it or convert it to JPEG/PNG") from None
    w, h = rgb.size
    # torchvision's Resize(int): the shorter side becomes `resize`, the longer one is truncated; Pillow's
    # bilinear filter widens with the scale, so shrinking is antialiased
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    w, h = rgb.size
    left, top = round((w - crop) / 2.0), round((h - crop) / 2.0)
    rgb = rgb.crop((left, top, left + crop, top + crop))
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class LazyImages:
    """Image files read on access: `images[i]`, `images[a:b]`, `images[index_tensor]` give float32 tensors
    (N, 3, crop, crop); `head(n)` the first n files, still unread."""

    def __init__(self, paths: Sequence[Path], resize: int = RESIZE, crop: int = CROP) -> None:
        if crop > resize:
            raise DataError(f"crop {crop} larger than resize {resize}: the centre crop must fit the resized image")
        self.paths = list(paths)
        self.resize, self.crop = resize, crop

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> torch.Size:
        return torch.Size([len(self), 3, self.crop, self.crop])

    def head(self, n: int) -> LazyImages:
        return LazyImages(self.paths[:n], self.resize, self.crop)

    def __getitem__(self, index: int | slice | torch.Tensor | Sequence[int]) -> torch.Tensor:
        if isinstance(index, int):
            return decode(self.paths[index], self.resize, self.crop)
        if isinstance(index, slice):
            chosen = self.paths[index]
        else:
            chosen = [self.paths[i] for i in torch.as_tensor(index).reshape(-1).tolist()]
        if not chosen:
            return torch.empty(0, 3, self.crop, self.crop)
        return torch.stack([decode(p, self.resize, self.crop) for p in chosen])


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if _is_image(p))


def load_image_folder(directory: str | Path, resize: int = RESIZE, crop: int = CROP) -> ImageData:
    """`images:DIR` → ImageData with lazily decoded images (see the module docstring for the layout)."""
    root = Path(directory).expanduser()
    spec = f"images:{directory}"
    if not root.is_dir():
        raise DataError(f"--data {spec}: no such folder; give a folder of class subfolders (DIR/<class>/*.jpg)")
    entries = sorted(root.iterdir())
    top = [p for p in entries if _is_image(p)]
    per_class = [(d.name, _images_in(d)) for d in entries if d.is_dir() and not d.name.startswith(".")]
    per_class = [(name, files) for name, files in per_class if files]
    if top and per_class:
        raise DataError(
            f"--data {spec}: holds both images ({top[0].name}, …) and class folders ({per_class[0][0]}/, …); "
            "put every image in a class folder (labelled) or all in the folder itself (unlabelled)"
        )
    if not top and not per_class:
        raise DataError(f"--data {spec}: no images ({', '.join(sorted(SUFFIXES))}) in it or in its subfolders")
    if top:
        return ImageData("images", str(directory), LazyImages(top, resize, crop), None, [])
    indexed = all(name.isdecimal() for name, _ in per_class)
    if indexed:
        per_class.sort(key=lambda item: int(item[0]))
    names = [name for name, _ in per_class]
    class_of = [int(name) for name in names] if indexed else range(len(names))
    paths = [p for _, files in per_class for p in files]
    labels = torch.tensor([c for c, (_, files) in zip(class_of, per_class, strict=True) for _ in files])
    return ImageData("images", str(directory), LazyImages(paths, resize, crop), labels, names, indexed=indexed)
