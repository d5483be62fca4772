"""`images:DIR`: the user's own image folders, decoded lazily with ImageNet's evaluation transform."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from bayesquant.data import load_dataset
from bayesquant.data.calibration import calibration_batches, labelled_batches, labels_fit
from bayesquant.data.folder import LazyImages, decode, load_image_folder
from bayesquant.data.images import ImageData, to_input_shape
from bayesquant.errors import DataError, UserError
from bayesquant.eval.evaluate import evaluate_classifier


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def _solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


@pytest.fixture
def two_classes(tmp_path) -> Path:
    root = tmp_path / "photos"
    _save(root / "dog" / "b.png", _solid(300, 260, (0, 0, 255)))
    _save(root / "cat" / "a.png", _solid(256, 300, (255, 0, 0)))
    _save(root / "cat" / "sub" / "c.jpg", np.full((40, 50), 128, dtype=np.uint8))  # grey JPEG, nested
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 1], rgba[..., 3] = 255, 255
    _save(root / "dog" / "d.png", rgba)  # RGBA
    (root / "dog" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    return root


def test_class_folders_give_sorted_labels_and_lazy_rgb_crops(two_classes):
    data = load_dataset(f"images:{two_classes}")
    assert isinstance(data, ImageData) and isinstance(data.images, LazyImages)
    assert data.classes == ["cat", "dog"] and not data.indexed
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.images.shape == (4, 3, 224, 224)
    x = data.images[:]
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1))  # cat/a.png, red
    assert torch.allclose(x[1], torch.full((3, 224, 224), 128 / 255))  # grey → three equal channels
    assert torch.allclose(x[3], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1))  # RGBA → RGB
    assert torch.equal(data.images[torch.tensor([3, 0])], torch.stack([x[3], x[0]]))
    head = data.subset(2)
    assert isinstance(head.images, LazyImages) and len(head) == 2 and head.labels.tolist() == [0, 0]


def test_centre_crop_after_resizing_the_shorter_side(tmp_path):
    # 300 wide × 256 high: the shorter side is already 256, so the crop keeps columns 38 … 261 and rows 16 … 239
    img = _solid(256, 300, (0, 255, 0))
    img[:, :38] = (255, 0, 0)  # cut away on the left
    img[:, 262:] = (0, 0, 255)  # and on the right
    img[:, 38] = (255, 255, 255)  # the first column kept
    img[16] = (0, 0, 0)  # the first row kept
    x = decode(_save(tmp_path / "wide.png", img))
    assert torch.equal(x[:, 1:, 0], torch.ones(3, 223))
    assert torch.equal(x[:, 0, :], torch.zeros(3, 224))
    assert torch.equal(x[:, 1:, 1:], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 223, 223))
    # 512 × 512, left half black, right half white: resized to 256, cropped from 16; the edge falls at column 112
    half = np.zeros((512, 512, 3), dtype=np.uint8)
    half[:, 256:] = 255
    y = decode(_save(tmp_path / "half.png", half))
    assert torch.equal(y[:, :, :110], torch.zeros(3, 224, 110))
    assert torch.equal(y[:, :, 114:], torch.ones(3, 224, 110))


def test_integer_folders_are_class_indices(tmp_path):
    for name in ("10", "3", "7"):
        _save(tmp_path / "val" / name / "x.png", _solid(30, 30, (1, 2, 3)))
    data = load_image_folder(tmp_path / "val")
    assert data.indexed and data.classes == ["3", "7", "10"] and data.labels.tolist() == [3, 7, 10]


def test_flat_folder_is_unlabelled_scored_only_against_a_reference(tmp_path):
    for i in range(3):
        _save(tmp_path / "flat" / f"{i}.png", _solid(30, 40, (i, i, i)))
    data = load_dataset(f"images:{tmp_path / 'flat'}")
    assert data.labels is None and len(data) == 3 and data.subset(2).labels is None
    loaded = SimpleNamespace(key="m", module=torch.nn.Identity(), dataset="imagenet", classes=[])
    with pytest.raises(UserError, match=r"has no labels.*--reference"):
        evaluate_classifier(loaded, data)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 224 * 224, 4))
    net = SimpleNamespace(key="m", module=linear, dataset="imagenet", classes=[])
    same = evaluate_classifier(net, data, reference=net)  # fidelity to a reference needs no label
    assert same["n"] == 3 and same["agreement"] == 1.0 and same["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert "accuracy" not in same


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "no images"),
        ({"a.png": None, "cls/b.png": None}, "both images"),
        ({"bad.jpg": "text"}, "not a readable image"),
    ],
)
def test_bad_folders_name_the_problem(tmp_path, layout, message):
    root = tmp_path / "bad"
    root.mkdir()
    for rel, content in layout.items():
        if content is None:
            _save(root / rel, _solid(8, 8, (0, 0, 0)))
        else:
            (root / rel).write_text(content)
    with pytest.raises(DataError, match=message):
        load_image_folder(root).images[:]
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(f"images:{tmp_path / 'missing'}")


def test_to_input_shape_converts_channels_and_size():
    rgb = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(2, 3, 224, 224)
    grey = to_input_shape(rgb, (1, 28, 28))
    assert grey.shape == (2, 1, 28, 28)
    assert torch.allclose(grey, torch.full_like(grey, 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6))
    small = torch.rand(2, 1, 28, 28)
    big = to_input_shape(small, (3, 224, 224))
    assert big.shape == (2, 3, 224, 224) and torch.equal(big[:, 0], big[:, 2])
    assert to_input_shape(small, (1, 28, 28)) is small and to_input_shape(small, None) is small
    with pytest.raises(DataError, match="4 channels"):
        to_input_shape(torch.rand(1, 4, 8, 8), (3, 8, 8))


def test_labels_fit_the_model_only_when_the_classes_match(tmp_path):
    mnist_net = SimpleNamespace(
        key="m", dataset="mnist", classes=[str(i) for i in range(10)], task=SimpleNamespace(value="x")
    )
    imagenet_net = SimpleNamespace(key="e", dataset="imagenet", classes=[], task=SimpleNamespace(value="x"))

    def folder(labels, classes, indexed):
        return ImageData("images", "d", torch.zeros(len(labels), 3, 4, 4), torch.tensor(labels), classes, indexed)

    assert labels_fit(mnist_net, folder([0, 9], ["0", "9"], True))
    assert not labels_fit(mnist_net, folder([0, 10], ["0", "10"], True))
    assert labels_fit(mnist_net, folder(list(range(10)), [f"c{i}" for i in range(10)], False))
    assert not labels_fit(mnist_net, folder([0, 1, 2], ["a", "b", "c"], False))
    assert labels_fit(imagenet_net, folder([3, 999], ["3", "999"], True))
    assert not labels_fit(imagenet_net, folder([0, 1], ["a", "b"], False))
    assert not labels_fit(
        mnist_net, ImageData("fashion-mnist", "test", torch.zeros(1, 1, 28, 28), torch.zeros(1).long(), [])
    )


def test_imagenet_sized_inputs_fit_posteriors_in_small_batches(tmp_path):
    for i in range(20):
        _save(tmp_path / "val" / str(i % 2) / f"{i}.png", _solid(24, 24, (i, 0, 0)))
    net = SimpleNamespace(key="e", dataset="imagenet", classes=[], task=SimpleNamespace(value="image_classification"),
                          module=torch.nn.Linear(1, 1))  # fmt: skip
    batches = labelled_batches(net, f"images:{tmp_path / 'val'}", nsamples=20)
    assert [b[0].shape[0] for b in batches] == [16, 4] and batches.labels_valid  # folders 0, 1 < 1,000 classes
    assert batches[0][0].shape[1:] == (3, 224, 224)


@pytest.mark.integration
def test_efficientnet_reads_a_folder_of_photos(tmp_path):
    """The float EfficientNet-Lite0 recognises scikit-learn's two photos through the folder loader: a palace
    (ImageNet class 698) and a daisy (985). A wrong crop, channel order or scale would lose them."""
    import sklearn

    from bayesquant.eval import evaluate

    photos = Path(sklearn.__file__).parent / "datasets" / "images"
    for cls, name in (("698", "china.jpg"), ("985", "flower.jpg")):
        (tmp_path / "val" / cls).mkdir(parents=True)
        (tmp_path / "val" / cls / name).write_bytes((photos / name).read_bytes())
    result = evaluate("efficientnet-lite0", f"images:{tmp_path / 'val'}")
    assert result["n"] == 2 and result["accuracy"] == 1.0
    from bayesquant.models import load_model

    batches = calibration_batches(load_model("digit-cnn"), f"images:{tmp_path / 'val'}", nsamples=2)
    assert batches[0][0][0].shape == (2, 1, 28, 28)  # RGB crops brought to the MNIST net's input


@pytest.mark.integration
def test_gptq_quantizes_efficientnet_depthwise_layers_from_a_photo_folder(tmp_path):
    """GPTQ calibrated on an image folder runs through EfficientNet's 16 depthwise convolutions (whose Hessian once
    crashed) and stays far closer to the float model than round-to-nearest at the same grid."""
    import matplotlib
    import sklearn

    from bayesquant.api import quantize
    from bayesquant.config import QuantizeConfig
    from bayesquant.eval import evaluate

    photos = [Path(sklearn.__file__).parent / "datasets" / "images" / n for n in ("china.jpg", "flower.jpg")]
    photos.append(Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg")
    (tmp_path / "flat").mkdir()
    for p in photos:
        (tmp_path / "flat" / p.name).write_bytes(p.read_bytes())
    spec = f"images:{tmp_path / 'flat'}"
    kl = {}
    for method in ("rtn", "gptq"):
        result = quantize("efficientnet-lite0", QuantizeConfig(method=method, bits=4, calib=spec, nsamples=3))
        kl[method] = evaluate(result.model, spec, reference="efficientnet-lite0")["kl_to_reference"]
    assert kl["gptq"] < 0.5 * kl["rtn"], kl
