"""Training recipes for the reference nets we build ourselves (deterministic given the seed)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bayesquant.data.images import ImageData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRecipe:
    """Hyper-parameters of `train_image_classifier` (AdamW, one-cycle schedule, label smoothing 0)."""

    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 128
    weight_decay: float = 5e-4
    shift: int = 0  # random translation of up to `shift` pixels (per image)
    hflip: bool = False  # random horizontal flips (Fashion-MNIST; never digits)
    seed: int = 0


def augment(x: torch.Tensor, recipe: ImageRecipe, gen: torch.Generator) -> torch.Tensor:
    """Random per-image translations (bilinear resampling, zero padding) and optional flips."""
    n, _, h, w = x.shape
    if recipe.shift:
        shifts = (torch.randint(-recipe.shift, recipe.shift + 1, (n, 2), generator=gen)).float()
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = shifts[:, 0] * 2 / w  # affine_grid works in [-1, 1] coordinates
        theta[:, 1, 2] = shifts[:, 1] * 2 / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if recipe.hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def train_image_classifier(model: nn.Module, train: ImageData, recipe: ImageRecipe) -> dict:
    """Train `model` on `train` in place; returns {"seconds", "final_loss"}."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    loader = train.loader(batch_size=recipe.batch_size, shuffle=True, seed=recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=len(loader), pct_start=0.2
    )
    start = time.perf_counter()
    model.train()
    loss_avg = float("nan")
    for epoch in range(recipe.epochs):
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False, mininterval=1.0)
        total, count = 0.0, 0
        for x, y in bar:
            x = augment(x, recipe, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            count += len(y)
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        loss_avg = total / count
        log.info("epoch %d/%d: train loss %.4f", epoch + 1, recipe.epochs, loss_avg)
    model.eval()
    return {"seconds": time.perf_counter() - start, "final_loss": loss_avg}


@dataclass(frozen=True)
class HeadRecipe:
    """Linear head on frozen mean-pooled encoder features: full-batch L-BFGS with L2 regularisation."""

    max_length: int = 256
    l2: float = 1e-3
    max_iter: int = 500
    batch_size: int = 32
    seed: int = 0


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], max_length: int, batch_size: int, desc: str) -> torch.Tensor:
    """Mean-pooled encoder features (N, H) of `texts` (the classifier's `embed`)."""
    feats = []
    for i in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False, mininterval=1.0):
        enc = tokenizer(
            texts[i : i + batch_size],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        feats.append(model.embed(enc["input_ids"], enc["attention_mask"]))
    return torch.cat(feats)


def train_text_head(model, tokenizer, texts: list[str], labels: torch.Tensor, recipe: HeadRecipe) -> dict:
    """Fit `model.head` on frozen features of `texts` (multinomial logistic regression)."""
    start = time.perf_counter()
    model.eval()
    feats = encode_texts(model, tokenizer, texts, recipe.max_length, recipe.batch_size, "encoding train split")
    torch.manual_seed(recipe.seed)
    head: nn.Linear = model.head
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=recipe.max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(feats), labels) + recipe.l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    return {"seconds": time.perf_counter() - start, "final_loss": float(loss)}
