"""Dirty-MNIST: MNIST (in-distribution) + Ambiguous-MNIST (aleatoric) + Fashion-MNIST (out-of-distribution).

Dirty-MNIST is the benchmark of Mukhoti et al. 2021 ("Deterministic Neural Networks with Appropriate Inductive
Biases Capture Epistemic and Aleatoric Uncertainty", §5 and appendix C), used by the QBNN paper (arXiv
2512.10602). Its Ambiguous-MNIST part cannot be downloaded here, so this module *generates* an equivalent set
with the same recipe, and also reads the original files when a user has them.

Recipe (`AmbiguousRecipe`, every number seeded and recorded):

1. A VAE (Kingma & Welling 2014) with a Bernoulli decoder is trained on the MNIST training images:
   loss = BCE(x, dec(z)) + KL(N(m(x), diag s²(x)) ‖ N(0, I)), z = m + s·ε.
2. An ensemble of K MNIST classifiers (MLPs, different seeds) is trained on the same images.
3. Candidates: pairs of anchor digits (i, j) with different labels, their latent means interpolated,
   z = (1 − α)·m(x_i) + α·m(x_j), α ~ U(alpha_low, alpha_high), decoded, and rounded to 8-bit pixels.
4. Each candidate is scored by the ensemble, p̄ = (1/K) Σ_k p_k(y | x):
       H[p̄] = −Σ_c p̄_c log p̄_c                          (total predictive entropy, nats)
       MI   = H[p̄] − (1/K) Σ_k H[p_k]                     (disagreement between members)
   and kept when H[p̄] ≥ min_entropy (ambiguous: the members spread their mass over several classes) and
   MI ≤ max_mi (the members *agree* on that spread: aleatoric, not epistemic uncertainty).
5. The label of a kept image is sampled from p̄ (so the labels themselves are noisy, as in the original).

Training candidates use MNIST-train anchors, test candidates MNIST-test anchors (disjoint digits). The result
is cached under `cache_dir()/data/ambiguous-mnist/<recipe key>/` (an npz of uint8 images, labels and scores,
`meta.json`, and a sample grid `grid.png`).

>>> amb = ambiguous_mnist()  # builds once (a few minutes on 2 CPU cores), then loads from the cache  # doctest: +SKIP
>>> test = load_dirty_mnist("test", ambiguous=amb)  # doctest: +SKIP
>>> test.images.shape, test.source.bincount()  # doctest: +SKIP
(torch.Size([26000, 1, 28, 28]), tensor([10000,  6000, 10000]))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bayesquant.data.images import ImageData, load_idx_images
from bayesquant.errors import DataError, UserError
from bayesquant.eval.metrics import mutual_information, predictive_entropy
from bayesquant.paths import atomic_dir, cache_dir, save_png

log = logging.getLogger(__name__)

__all__ = [
    "SOURCES",
    "AmbiguousMNIST",
    "AmbiguousRecipe",
    "DirtyMNIST",
    "ambiguity_scores",
    "ambiguous_mnist",
    "build_ambiguous_mnist",
    "load_dirty_mnist",
    "load_original_ambiguous",
    "save_sample_grid",
    "select_ambiguous",
]

SOURCES = ("mnist", "ambiguous-mnist", "fashion-mnist")  # index = DirtyMNIST.source code
ORIGINAL_FILES = ("amnist_samples.pt", "amnist_labels.pt")  # the release of Mukhoti et al. (ddu_dirty_mnist)
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class AmbiguousRecipe:
    """Every setting of the Ambiguous-MNIST generator; `key()` names its cache entry.

    n_train, n_test: kept images per split. latent_dim, vae_hidden, vae_epochs: the VAE. vae_images: MNIST
    training images it sees (None: all 60k). ensemble_size, ensemble_hidden, ensemble_epochs: the scoring
    ensemble (MLPs 784 → hidden → 10). min_entropy: keep H[p̄] ≥ this (nats; log 10 = 2.30 is the maximum).
    max_mi: keep MI ≤ this (nats). alpha_low, alpha_high: the interpolation weight range. candidates: decoded
    per round; max_rounds: rounds per split before giving up. seed: everything random.
    """

    n_train: int = 6000
    n_test: int = 6000
    latent_dim: int = 8
    vae_hidden: int = 400
    vae_epochs: int = 10
    vae_images: int | None = None
    ensemble_size: int = 5
    ensemble_hidden: int = 256
    ensemble_epochs: int = 3
    min_entropy: float = 0.6
    max_mi: float = 0.1
    alpha_low: float = 0.3
    alpha_high: float = 0.7
    candidates: int = 4096
    max_rounds: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    version: int = _FORMAT_VERSION

    def __post_init__(self) -> None:
        ints = ("n_train", "n_test", "latent_dim", "vae_hidden", "vae_epochs", "ensemble_size", "ensemble_hidden")
        ints += ("ensemble_epochs", "candidates", "max_rounds", "batch_size")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{name}={v!r}: must be a positive integer")
        if self.vae_images is not None and (not isinstance(self.vae_images, int) or self.vae_images < 1):
            raise UserError(f"vae_images={self.vae_images!r}: must be a positive integer or None (all)")
        if not 0 <= self.min_entropy < math.log(10):
            raise UserError(f"min_entropy={self.min_entropy!r}: must lie in [0, log 10 = 2.303) nats")
        if not self.max_mi >= 0:
            raise UserError(f"max_mi={self.max_mi!r}: must be ≥ 0 nats")
        if not 0 <= self.alpha_low <= self.alpha_high <= 1:
            raise UserError(f"alpha_low={self.alpha_low!r}, alpha_high={self.alpha_high!r}: need 0 ≤ low ≤ high ≤ 1")
        if not self.lr > 0:
            raise UserError(f"lr={self.lr!r}: must be positive")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """12 hex digits of the sha256 of the recipe's JSON: the cache directory name."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class AmbiguousMNIST:
    """Ambiguous-MNIST train/test splits (images float32 in [0, 1], (N, 1, 28, 28)) and where they came from.

    entropy / mi: the generator ensemble's H[p̄] and MI per kept image (None for the original files).
    """

    train: ImageData
    test: ImageData
    source: str  # "generated:<key>" or the original files' directory
    meta: dict
    train_entropy: Tensor | None = None
    train_mi: Tensor | None = None
    test_entropy: Tensor | None = None
    test_mi: Tensor | None = None


# ---------------------------------------------------------------- models of the recipe


class VAE(nn.Module):
    """MLP VAE with a Bernoulli decoder: 784 → hidden → (mean, log-variance) of a `latent`-dim Gaussian."""

    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 784))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.enc(x).chunk(2, dim=-1)  # (B, latent) each
        return mean, logvar

    def decode_logits(self, z: Tensor) -> Tensor:
        return self.dec(z)  # (B, 784) Bernoulli logits

    def decode(self, z: Tensor) -> Tensor:
        """Bernoulli means as images (B, 1, 28, 28) in [0, 1]."""
        return torch.sigmoid(self.dec(z)).view(-1, 1, 28, 28)

    def loss(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Negative ELBO per image: BCE summed over pixels + KL(q(z|x) ‖ N(0, I)) (Kingma & Welling 2014, eq. 10)."""
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=gen, dtype=mean.dtype)
        z = mean + (0.5 * logvar).exp() * eps
        bce = F.binary_cross_entropy_with_logits(self.decode_logits(z), x.flatten(1), reduction="sum")
        kl = -0.5 * (1 + logvar - mean.square() - logvar.exp()).sum()
        return (bce + kl) / len(x)


def _classifier(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _epochs(
    model: nn.Module, loss_fn, x: Tensor, y: Tensor | None, recipe: AmbiguousRecipe, epochs: int, seed: int, desc: str,
    progress: bool,
) -> float:  # fmt: skip
    """Adam over shuffled mini-batches of (x, y); returns the last epoch's mean loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    bs = recipe.batch_size
    steps = epochs * math.ceil(len(x) / bs)
    last = float("nan")
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False, mininterval=1.0) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            total, n = 0.0, 0
            for i in range(0, len(x), bs):
                idx = order[i : i + bs]
                loss = loss_fn(x[idx], None if y is None else y[idx], gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, n = total + float(loss.detach()) * len(idx), n + len(idx)
                bar.update()
            last = total / n
            bar.set_postfix(loss=f"{last:.4g}")
    return last


def train_vae(images: Tensor, recipe: AmbiguousRecipe, progress: bool = True) -> VAE:
    """Step 1 of the recipe: the VAE on `images` (N, 1, 28, 28) in [0, 1], seeded by `recipe.seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        vae = VAE(recipe.latent_dim, recipe.vae_hidden)
    loss = _epochs(vae, lambda x, _y, g: vae.loss(x, g), images, None, recipe, recipe.vae_epochs,
                   recipe.seed, "vae", progress)  # fmt: skip
    log.info("ambiguous-mnist: VAE trained, final negative ELBO %.2f nats per image", loss)
    return vae.eval()


def train_ensemble(images: Tensor, labels: Tensor, recipe: AmbiguousRecipe, progress: bool = True) -> list[nn.Module]:
    """Step 2 of the recipe: `ensemble_size` MLP classifiers, member k seeded by seed + 1 + k."""
    members = []
    for k in range(recipe.ensemble_size):
        seed = recipe.seed + 1 + k
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _classifier(recipe.ensemble_hidden)
        _epochs(net, lambda x, y, _g, net=net: F.cross_entropy(net(x), y), images, labels, recipe,
                recipe.ensemble_epochs, seed, f"ensemble {k + 1}/{recipe.ensemble_size}", progress)  # fmt: skip
        members.append(net.eval())
    return members


@torch.no_grad()
def ensemble_probs(members: list[nn.Module], images: Tensor, batch: int = 2048) -> Tensor:
    """Softmax outputs of every member: (K, N, 10)."""
    out = [torch.cat([m(images[i : i + batch]).softmax(-1) for i in range(0, len(images), batch)]) for m in members]
    return torch.stack(out)


def ambiguity_scores(probs: Tensor) -> tuple[Tensor, Tensor]:
    """(H[p̄], MI) per image from member probabilities (K, N, C): total entropy and member disagreement (nats)."""
    return predictive_entropy(probs), mutual_information(probs)


def select_ambiguous(probs: Tensor, min_entropy: float, max_mi: float) -> Tensor:
    """Step 4 of the recipe: a boolean mask (N,) of the images with H[p̄] ≥ min_entropy and MI ≤ max_mi."""
    ent, mi = ambiguity_scores(probs)
    return (ent >= min_entropy) & (mi <= max_mi)


@torch.no_grad()
def _generate(
    vae: VAE, members: list[nn.Module], anchors: ImageData, n: int, recipe: AmbiguousRecipe, seed: int, desc: str,
    progress: bool,
) -> dict[str, Tensor | int]:  # fmt: skip
    """Steps 3–5 for one split: decode interpolations between anchors of different classes until n are kept."""
    gen = torch.Generator().manual_seed(seed)
    x_a, y_a = anchors.images, anchors.labels
    kept: dict[str, list[Tensor]] = {"images": [], "labels": [], "entropy": [], "mi": []}
    have, tried = 0, 0
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False, mininterval=1.0) as bar:
        for _ in range(recipe.max_rounds):
            i = torch.randint(len(y_a), (recipe.candidates,), generator=gen)
            j = torch.randint(len(y_a), (recipe.candidates,), generator=gen)
            alpha = recipe.alpha_low + (recipe.alpha_high - recipe.alpha_low) * torch.rand(
                recipe.candidates, 1, generator=gen
            )
            diff = y_a[i] != y_a[j]
            i, j, alpha = i[diff], j[diff], alpha[diff]
            z = (1 - alpha) * vae.encode(x_a[i])[0] + alpha * vae.encode(x_a[j])[0]  # (M, latent)
            pixels = torch.round(vae.decode(z) * 255).to(torch.uint8)  # stored as 8-bit, scored as stored
            images = pixels.float() / 255
            probs = ensemble_probs(members, images)  # (K, M, 10)
            ent, mi = ambiguity_scores(probs)
            mask = (ent >= recipe.min_entropy) & (mi <= recipe.max_mi)
            labels = torch.multinomial(probs.mean(0).float(), 1, generator=gen).squeeze(1)  # y ~ p̄
            tried += len(i)
            take = torch.nonzero(mask).squeeze(1)[: n - have]
            for key, value in (("images", pixels), ("labels", labels), ("entropy", ent), ("mi", mi)):
                kept[key].append(value[take])
            have += len(take)
            bar.update(len(take))
            if have >= n:
                break
    if have < n:
        raise DataError(
            f"ambiguous-mnist: only {have} of {n} {desc} images passed min_entropy={recipe.min_entropy} and "
            f"max_mi={recipe.max_mi} in {recipe.max_rounds} rounds of {recipe.candidates} candidates; lower "
            "min_entropy, raise max_mi or raise max_rounds"
        )
    out: dict[str, Tensor | int] = {k: torch.cat(v) for k, v in kept.items()}
    out["candidates"] = tried
    return out


def build_ambiguous_mnist(
    recipe: AmbiguousRecipe, mnist_train: ImageData, mnist_test: ImageData, progress: bool = True
) -> tuple[AmbiguousMNIST, dict[str, nn.Module | list[nn.Module]]]:
    """Run the whole recipe (no caching); returns the set and the fitted models {"vae", "ensemble"}."""
    start = time.perf_counter()
    x, y = mnist_train.images, mnist_train.labels
    if recipe.vae_images is not None:
        x_vae = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(recipe.seed))[: recipe.vae_images]]
    else:
        x_vae = x
    vae = train_vae(x_vae, recipe, progress)
    members = train_ensemble(x, y, recipe, progress)
    parts = {}
    for split, anchors, n, offset in (("train", mnist_train, recipe.n_train, 101), ("test", mnist_test, recipe.n_test,
                                                                                   202)):  # fmt: skip
        parts[split] = _generate(vae, members, anchors, n, recipe, recipe.seed + offset, f"ambiguous {split}", progress)
    meta = {
        "recipe": recipe.to_dict(),
        "key": recipe.key(),
        "seconds": round(time.perf_counter() - start, 1),
        "acceptance": {s: len(p["labels"]) / p["candidates"] for s, p in parts.items()},
        "mean_entropy": {s: float(p["entropy"].mean()) for s, p in parts.items()},
        "mean_mi": {s: float(p["mi"].mean()) for s, p in parts.items()},
    }
    amb = _from_arrays({f"{s}_{k}": v for s, p in parts.items() for k, v in p.items() if k != "candidates"}, meta)
    return amb, {"vae": vae, "ensemble": members}


def _from_arrays(arrays: dict, meta: dict) -> AmbiguousMNIST:
    def image_data(split: str) -> ImageData:
        pixels = torch.as_tensor(np.asarray(arrays[f"{split}_images"]))
        images = pixels.float().div(255).view(-1, 1, 28, 28)
        labels = torch.as_tensor(np.asarray(arrays[f"{split}_labels"])).long()
        return ImageData("ambiguous-mnist", split, images, labels, [str(i) for i in range(10)])

    def scores(name: str) -> Tensor:
        return torch.as_tensor(np.asarray(arrays[name])).double()

    return AmbiguousMNIST(
        image_data("train"), image_data("test"), f"generated:{meta['key']}", meta,
        scores("train_entropy"), scores("train_mi"), scores("test_entropy"), scores("test_mi"),
    )  # fmt: skip


def save_sample_grid(images: Tensor, labels: Tensor | None, path: str | Path, n: int = 64, title: str = "") -> Path:
    """A PNG grid of the first `n` images (N, 1, 28, 28) in [0, 1], each titled with its label (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.25), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            if labels is not None:
                ax.set_title(str(int(labels[k])), fontsize=7, pad=1)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def _cache_entry(recipe: AmbiguousRecipe) -> Path:
    return cache_dir() / "data" / "ambiguous-mnist" / recipe.key()


def ambiguous_mnist(
    recipe: AmbiguousRecipe | None = None,
    *,
    path: str | Path | None = None,
    root: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> AmbiguousMNIST:
    """Ambiguous-MNIST: the original files when `path` is given, else the generated set of `recipe` (default
    `AmbiguousRecipe()`), built on first use and cached. root: where MNIST lives (see `load_idx_images`)."""
    if path is not None:
        return load_original_ambiguous(path)
    recipe = recipe or AmbiguousRecipe()
    entry = _cache_entry(recipe)
    data_file, meta_file = entry / "ambiguous.npz", entry / "meta.json"
    if not force and data_file.is_file() and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        with np.load(data_file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        log.info("ambiguous-mnist: loaded %s", entry)
        return _from_arrays(arrays, meta)
    log.warning("ambiguous-mnist: generating recipe %s (cached in %s afterwards)", recipe.key(), entry)
    train, test = load_idx_images("mnist", "train", root), load_idx_images("mnist", "test", root)
    amb, _ = build_ambiguous_mnist(recipe, train, test, progress)
    arrays = {
        "train_images": (amb.train.images * 255).round().to(torch.uint8).squeeze(1).numpy(),
        "train_labels": amb.train.labels.numpy().astype(np.uint8),
        "test_images": (amb.test.images * 255).round().to(torch.uint8).squeeze(1).numpy(),
        "test_labels": amb.test.labels.numpy().astype(np.uint8),
        "train_entropy": amb.train_entropy.numpy(),
        "train_mi": amb.train_mi.numpy(),
        "test_entropy": amb.test_entropy.numpy(),
        "test_mi": amb.test_mi.numpy(),
    }
    with atomic_dir(entry) as tmp:
        np.savez_compressed(tmp / "ambiguous.npz", **arrays)
        (tmp / "meta.json").write_text(json.dumps(amb.meta, indent=2) + "\n")
        save_sample_grid(amb.train.images, amb.train.labels, tmp / "grid.png",
                         title=f"generated Ambiguous-MNIST {recipe.key()} (label ~ ensemble p̄)")  # fmt: skip
    return amb


def load_original_ambiguous(path: str | Path, all_labels: bool = False) -> AmbiguousMNIST:
    """The released Ambiguous-MNIST of Mukhoti et al. 2021: `amnist_samples.pt` (float images (N, 1, 28, 28) in
    [0, 1]) and `amnist_labels.pt` (labels (N, L), L sampled labels per image) in directory `path` (or the path of
    either file). As in their loader, the first half of the images is the training split, the second the test
    split. all_labels=False keeps each image once with its first label; True repeats it once per label (their
    60k/60k layout). Read with torch.load(weights_only=True): tensors only, never arbitrary pickles."""
    p = Path(path).expanduser()
    directory = p.parent if p.is_file() else p
    files = [directory / f for f in ORIGINAL_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"--ambiguous {path}: missing {', '.join(missing)}; point it to the directory holding "
            f"{' and '.join(ORIGINAL_FILES)} (the ddu_dirty_mnist release), or leave it out to use the generated set"
        )
    try:
        x = torch.load(files[0], map_location="cpu", weights_only=True)
        y = torch.load(files[1], map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file
        raise DataError(f"--ambiguous {path}: cannot read the Ambiguous-MNIST tensors ({exc})") from exc
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.numel() % 784 or y.dim() not in (1, 2):
        raise DataError(f"--ambiguous {path}: expected image (N, 1, 28, 28) and label (N, L) tensors")
    x = x.float().reshape(-1, 1, 28, 28)
    y = y.long().reshape(len(x), -1)
    if float(x.max()) > 1.5:  # stored as 0..255
        x = x / 255
    if all_labels:
        x = x.repeat_interleave(y.shape[1], dim=0)
        y = y.reshape(-1, 1)
    half = len(x) // 2
    classes = [str(i) for i in range(10)]
    train = ImageData("ambiguous-mnist", "train", x[:half], y[:half, 0], classes)
    test = ImageData("ambiguous-mnist", "test", x[half:], y[half:, 0], classes)
    return AmbiguousMNIST(train, test, str(directory), {"original": str(directory), "all_labels": all_labels})


# ---------------------------------------------------------------- Dirty-MNIST


@dataclass
class DirtyMNIST:
    """One Dirty-MNIST split: images (N, 1, 28, 28) in [0, 1], labels (N,) (−1 for Fashion-MNIST: no digit),
    source (N,) int64 indexing `SOURCES` (0 MNIST, 1 Ambiguous-MNIST, 2 Fashion-MNIST)."""

    split: str
    images: Tensor
    labels: Tensor
    source: Tensor
    ambiguous_source: str

    def __len__(self) -> int:
        return len(self.labels)

    def part(self, name: str) -> tuple[Tensor, Tensor]:
        """(images, labels) of one source, by name ("mnist", "ambiguous-mnist", "fashion-mnist")."""
        if name not in SOURCES:
            raise UserError(f"source={name!r}: unknown; valid: {', '.join(SOURCES)}")
        mask = self.source == SOURCES.index(name)
        return self.images[mask], self.labels[mask]


def load_dirty_mnist(
    split: str,
    ambiguous: AmbiguousMNIST | str | Path | None = None,
    *,
    root: str | Path | None = None,
    max_per_source: int | None = None,
    include_fashion: bool | None = None,
    progress: bool = True,
) -> DirtyMNIST:
    """Dirty-MNIST `split`: MNIST + Ambiguous-MNIST (+ Fashion-MNIST, by default only for "test", as in
    Mukhoti et al. where Fashion-MNIST is the OOD test set). ambiguous: an `AmbiguousMNIST`, the path of the
    original files, or None (the default generated set, cached). max_per_source: the first N of each source
    (a quick run)."""
    if split not in ("train", "test"):
        raise DataError(f"dirty-mnist:{split}: unknown split; valid: train, test")
    if max_per_source is not None and max_per_source < 1:
        raise UserError(f"max_per_source={max_per_source!r}: must be a positive integer or None (all)")
    amb = ambiguous if isinstance(ambiguous, AmbiguousMNIST) else ambiguous_mnist(path=ambiguous, root=root,
                                                                                 progress=progress)  # fmt: skip
    parts = [load_idx_images("mnist", split, root), amb.train if split == "train" else amb.test]
    if include_fashion if include_fashion is not None else split == "test":
        fashion = load_idx_images("fashion-mnist", split, root)
        fashion = ImageData(fashion.name, split, fashion.images, torch.full_like(fashion.labels, -1), fashion.classes)
        parts.append(fashion)
    parts = [p.subset(max_per_source) for p in parts]
    images = torch.cat([p.images for p in parts])
    labels = torch.cat([p.labels for p in parts])
    source = torch.cat([torch.full((len(p),), k, dtype=torch.int64) for k, p in enumerate(parts)])
    return DirtyMNIST(split, images, labels, source, amb.source)
