"""Dirty-MNIST: the Ambiguous-MNIST recipe (selection rule, seeding, cache), the original-file loader, the splits."""

from __future__ import annotations

import math

import pytest
import torch

from bayesquant.data import dirty_mnist as D
from bayesquant.data.images import ImageData, load_idx_images
from bayesquant.errors import DataError, UserError

TINY = D.AmbiguousRecipe(
    n_train=24, n_test=16, latent_dim=4, vae_hidden=32, vae_epochs=1, ensemble_size=2, ensemble_hidden=16,
    ensemble_epochs=1, min_entropy=1.0, max_mi=0.2, candidates=256, max_rounds=20, batch_size=64,
)  # fmt: skip


@pytest.fixture(scope="module")
def mnist_small() -> tuple[ImageData, ImageData]:
    test = load_idx_images("mnist", "test")
    return test.subset(400), ImageData("mnist", "test", test.images[400:600], test.labels[400:600], test.classes)


@pytest.fixture(scope="module")
def tiny_build(mnist_small):
    return D.build_ambiguous_mnist(TINY, *mnist_small, progress=False)


def test_select_ambiguous_keeps_agreeing_high_entropy_only():
    confident = torch.tensor([0.97] + [0.03 / 9] * 9)
    split = torch.tensor([0.5, 0.5] + [0.0] * 8)
    other = torch.tensor([0.0, 0.0, 1.0] + [0.0] * 7)
    probs = torch.stack(
        [
            torch.stack([confident, confident]),  # confident and agreeing: low entropy → rejected
            torch.stack([split, split]),  # ambiguous and agreeing: H = log 2, MI = 0 → kept
            torch.stack([split, other]),  # members disagree: high MI (epistemic) → rejected
        ],
        dim=1,
    )  # (K=2, N=3, C=10)
    ent, mi = D.ambiguity_scores(probs)
    assert float(ent[1]) == pytest.approx(math.log(2))
    assert float(mi[1]) == pytest.approx(0.0, abs=1e-12)
    mask = D.select_ambiguous(probs, min_entropy=0.6, max_mi=0.1)
    assert mask.tolist() == [False, True, False]
    assert torch.equal(mask, (ent >= 0.6) & (mi <= 0.1))


def test_tiny_build_keeps_only_images_above_the_entropy_threshold(tiny_build):
    amb, models = tiny_build
    assert len(amb.train) == TINY.n_train and len(amb.test) == TINY.n_test
    assert float(amb.train_entropy.min()) >= TINY.min_entropy and float(amb.test_entropy.min()) >= TINY.min_entropy
    assert float(amb.train_mi.max()) <= TINY.max_mi
    # the scores belong to the stored 8-bit images: re-scoring them with the ensemble gives the same numbers
    ent, _ = D.ambiguity_scores(D.ensemble_probs(models["ensemble"], amb.train.images))
    torch.testing.assert_close(ent, amb.train_entropy, rtol=1e-5, atol=1e-6)
    assert bool(((amb.train.images * 255).round() == amb.train.images * 255).all())
    assert amb.train.labels.min() >= 0 and amb.train.labels.max() <= 9
    assert 0 < amb.meta["acceptance"]["train"] <= 1


def test_build_is_seeded(tiny_build, mnist_small):
    amb, _ = tiny_build
    again, _ = D.build_ambiguous_mnist(TINY, *mnist_small, progress=False)
    assert torch.equal(again.train.images, amb.train.images) and torch.equal(again.test.labels, amb.test.labels)
    other, _ = D.build_ambiguous_mnist(
        D.AmbiguousRecipe(**(TINY.to_dict() | {"seed": 1})), *mnist_small, progress=False
    )
    assert not torch.equal(other.train.images, amb.train.images)


def test_cache_builds_once_then_loads(isolated_cache, monkeypatch, mnist_small):
    monkeypatch.setattr(D, "load_idx_images", lambda name, split, root=None: mnist_small[0 if split == "train" else 1])
    first = D.ambiguous_mnist(TINY, progress=False)
    entry = isolated_cache / "data" / "ambiguous-mnist" / TINY.key()
    assert (entry / "ambiguous.npz").is_file() and (entry / "grid.png").read_bytes()[:4] == b"\x89PNG"

    def fail(*a, **k):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(D, "build_ambiguous_mnist", fail)
    second = D.ambiguous_mnist(TINY, progress=False)
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    torch.testing.assert_close(first.test_entropy, second.test_entropy)
    assert second.source == f"generated:{TINY.key()}"


def test_original_files_loader(tmp_path):
    x = torch.rand(8, 1, 28, 28)
    y = torch.arange(24).reshape(8, 3) % 10
    torch.save(x, tmp_path / "amnist_samples.pt")
    torch.save(y, tmp_path / "amnist_labels.pt")
    amb = D.load_original_ambiguous(tmp_path)
    assert len(amb.train) == 4 and len(amb.test) == 4
    assert torch.equal(amb.train.images, x[:4]) and torch.equal(amb.test.labels, y[4:, 0])
    multi = D.load_original_ambiguous(tmp_path / "amnist_samples.pt", all_labels=True)
    assert len(multi.train) == 12 and torch.equal(multi.train.labels, y[:4].reshape(-1))
    (tmp_path / "amnist_labels.pt").unlink()
    with pytest.raises(DataError, match=r"amnist_labels\.pt"):
        D.ambiguous_mnist(path=tmp_path)


def test_dirty_mnist_splits(tiny_build):
    amb, _ = tiny_build
    test = D.load_dirty_mnist("test", amb, max_per_source=10)
    assert test.source.bincount().tolist() == [10, 10, 10]
    assert bool((test.labels[test.source == 2] == -1).all())
    images, labels = test.part("ambiguous-mnist")
    assert torch.equal(images, amb.test.images[:10]) and torch.equal(labels, amb.test.labels[:10])
    train = D.load_dirty_mnist("train", amb, max_per_source=10)
    assert train.source.bincount().tolist() == [10, 10]  # Fashion-MNIST is test-only (OOD)
    with pytest.raises(DataError, match="valid: train, test"):
        D.load_dirty_mnist("val", amb)


def test_recipe_validation():
    with pytest.raises(UserError, match="min_entropy"):
        D.AmbiguousRecipe(min_entropy=3.0)
    with pytest.raises(UserError, match="n_train"):
        D.AmbiguousRecipe(n_train=0)
    assert D.AmbiguousRecipe().key() != D.AmbiguousRecipe(seed=1).key()


def test_ambiguous_mnist_spec_loads_the_cached_set(tiny_build, monkeypatch):
    from bayesquant.data.specs import DataSpec, load_dataset

    amb, _ = tiny_build
    monkeypatch.setattr(D, "ambiguous_mnist", lambda root=None: amb)  # the default set takes minutes to generate
    test = load_dataset("ambiguous-mnist:test")
    assert torch.equal(test.images, amb.test.images) and torch.equal(test.labels, amb.test.labels)
    assert torch.equal(load_dataset("ambiguous-mnist:train").labels, amb.train.labels)
    with pytest.raises(DataError, match="valid: train, test"):
        DataSpec.parse("ambiguous-mnist:all")
