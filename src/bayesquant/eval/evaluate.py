"""Evaluate a zoo model on a data SPEC: perplexity for language models, accuracy and calibration for
classifiers (optionally with T Monte-Carlo samples and against a reference model)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bayesquant.data import DataSpec, ImageData, TextData, eval_windows, load_dataset, tokenize
from bayesquant.data.calibration import align_labels, check_pairs, encode
from bayesquant.data.images import INPUT_SHAPES, to_input_shape
from bayesquant.errors import UserError
from bayesquant.eval import metrics as M
from bayesquant.models import LoadedModel, Task, load_model
from bayesquant.nn.layers import set_dequant_cache
from bayesquant.nn.placement import to_model

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_lm(
    loaded: LoadedModel,
    data: TextData,
    seq_len: int = 512,
    max_windows: int | None = None,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Perplexity with the protocol of DATA.md: the documents joined with "\\n\\n", tokenized once, cut into
    non-overlapping windows of `seq_len` tokens (last partial window dropped); each window predicts its
    own tokens 2..seq_len; perplexity = exp(mean token NLL)."""
    start = time.perf_counter()
    ids = tokenize(loaded.tokenizer, data.joined())
    windows = eval_windows(ids, seq_len, max_windows)  # (n, seq_len)
    model = loaded.module.eval()
    total, count = 0.0, 0
    for i in tqdm(range(0, len(windows), batch_size), desc="perplexity", unit="batch", mininterval=1.0):
        batch = to_model(windows[i : i + batch_size], model)
        logits = model(input_ids=batch, use_cache=False).logits  # (b, L, V)
        targets = batch[:, 1:]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="sum")
        total += float(nll)
        count += targets.numel()
    mean_nll = total / count
    return {
        "perplexity": M.perplexity(mean_nll),
        "nll": mean_nll,
        "n_windows": len(windows),
        "n_tokens_text": int(ids.numel()),
        "seq_len": seq_len,
        "seconds": time.perf_counter() - start,
    }


def _batches(loaded: LoadedModel, data: ImageData | TextData, batch_size: int):
    """Yield model inputs (a tuple of tensors) batch by batch, on the model's device and in its dtype."""
    if isinstance(data, ImageData):
        shape = INPUT_SHAPES.get(loaded.dataset)
        for i in range(0, len(data), batch_size):
            yield (to_model(to_input_shape(data.images[i : i + batch_size], shape), loaded.module),)
    else:
        check_pairs(loaded, data, "--data")
        for i in range(0, len(data), batch_size):
            yield to_model(encode(loaded, data, list(range(i, min(i + batch_size, len(data))))), loaded.module)


@torch.no_grad()
def predict_probs(
    loaded: LoadedModel, data: ImageData | TextData, samples: int = 1, batch_size: int = 256
) -> torch.Tensor:
    """Class probabilities (T, N, C) from T stochastic forward passes (T = 1 for a deterministic model)."""
    if samples < 1:
        raise UserError(f"--samples {samples}: must be ≥ 1")
    model = loaded.module.eval()
    if isinstance(data, TextData):
        batch_size = min(batch_size, 32)
    out = []
    n_batches = -(-len(data) // batch_size)
    for inputs in tqdm(_batches(loaded, data, batch_size), total=n_batches, desc="predict", mininterval=1.0):
        out.append(torch.stack([torch.softmax(model(*inputs).float(), -1).cpu() for _ in range(samples)]))
    return torch.cat(out, dim=1)


def classifier_metrics(sp: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The metrics of `evaluate_classifier` from per-sample probabilities `sp` (T, N, C) and labels (N,)."""
    probs = sp.mean(0)
    return {
        "accuracy": M.accuracy(probs, labels),
        "nll": M.nll(probs, labels),
        "ece": M.ece(probs, labels),
        "brier": M.brier(probs, labels),
        **uncertainty_metrics(sp),
    }


def uncertainty_metrics(sp: torch.Tensor) -> dict[str, Any]:
    """What needs no label: mean predictive entropy and mutual information of `sp` (T, N, C), and the counts."""
    return {
        "entropy": float(M.predictive_entropy(sp).mean()),
        "mutual_information": float(M.mutual_information(sp).mean()),
        "n": sp.shape[1],
        "samples": sp.shape[0],
    }


def evaluate_classifier(
    loaded: LoadedModel,
    data: ImageData | TextData,
    samples: int = 1,
    reference: LoadedModel | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Accuracy, NLL, ECE (15 bins), Brier and mean predictive entropy of the (sample-averaged) prediction;
    with T > 1 samples also the mean mutual information; with a reference model, agreement and KL. Unlabelled
    data (a folder of images without class folders) gives only what needs no label: entropy, mutual
    information, and with a reference model agreement and KL."""
    if data.labels is None and reference is None:
        raise UserError(
            f"{data.name}:{data.split} has no labels: give a labelled SPEC, or a --reference model to measure "
            "agreement and KL with it on these inputs"
        )
    check_pairs(loaded, data, "--data")
    data = align_labels(loaded, data)  # texts labelled by class name: the model's indices for those names
    if data.labels is not None and loaded.classes:
        _check_classes(loaded, data, len(loaded.classes))  # before a long prediction pass, where the model says
    start = time.perf_counter()
    sp = predict_probs(loaded, data, samples, batch_size)  # (T, N, C)
    if data.labels is not None:
        _check_classes(loaded, data, sp.shape[-1])
        result = classifier_metrics(sp, data.labels)
    else:
        result = uncertainty_metrics(sp)
    probs = sp.mean(0)
    if reference is not None:
        ref = predict_probs(reference, data, 1, batch_size)[0]
        result["agreement"] = M.agreement(probs, ref)
        result["kl_to_reference"] = M.kl_divergence(ref, probs)
    result["seconds"] = time.perf_counter() - start
    return result


def _check_classes(loaded: LoadedModel, data: ImageData | TextData, n_classes: int) -> None:
    where = f"{data.name}:{data.split}" if data.name in ("images", "jsonl") else data.name
    if getattr(data, "indexed", False):
        top = int(data.labels.max())
        if top >= n_classes:
            what = "class folder" if data.name == "images" else "label"
            raise UserError(
                f"--data {where}: {what} {top} is not a class of --model {loaded.key}, which predicts "
                f"{n_classes} (indices 0 … {n_classes - 1})"
            )
    elif n_classes != len(data.classes):
        fix = " (name the class folders by class index, 0 … C−1, or give all C)" if data.name == "images" else ""
        raise UserError(f"--model {loaded.key} predicts {n_classes} classes but {where} has {len(data.classes)}{fix}")


def _check_compatible(loaded: LoadedModel, data: ImageData | TextData, spec: DataSpec) -> None:
    if loaded.task == Task.EMBEDDING:
        raise UserError(
            f"--model {loaded.key} is an encoder without a task head; evaluate `minilm-bbc` (MiniLM + BBC head)"
        )
    if loaded.task == Task.CAUSAL_LM and not isinstance(data, TextData):
        raise UserError(f"--data {spec}: {loaded.key} is a language model; give text (bbc-news:test, text:PATH)")
    if loaded.task == Task.TEXT and not isinstance(data, TextData):
        try_ = "bbc-news:test" if loaded.dataset == "bbc-news" else "jsonl:PATH (labelled texts)"
        raise UserError(f"--data {spec}: {loaded.key} classifies text; try --data {try_}")
    if loaded.task == Task.IMAGE:
        if not isinstance(data, ImageData):
            try_ = "images:DIR" if loaded.dataset == "imagenet" else f"{loaded.dataset}:test"
            raise UserError(f"--data {spec}: {loaded.key} classifies images; try --data {try_}")
        if loaded.dataset == "imagenet" and data.name != "images":
            raise UserError(
                f"--data {spec}: --model {loaded.key} classifies ImageNet images, which cannot be had offline; give "
                "a folder of them, --data images:DIR (DIR/<class>/*.jpg, class folders named by class index or "
                "all 1,000 synset folders)"
            )
        if loaded.dataset and data.name not in (loaded.dataset, "images"):  # a folder is the user's own choice
            log.warning("%s was trained on %s, evaluating on %s", loaded.key, loaded.dataset, data.name)


def evaluate(
    model: str | LoadedModel,
    data: str | DataSpec | ImageData | TextData,
    *,
    max_windows: int | None = None,
    max_examples: int | None = None,
    samples: int = 1,
    seq_len: int = 512,
    reference: str | LoadedModel | None = None,
    posterior: str | Any | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (zoo key, directory or LoadedModel) on `data` (SPEC or loaded data). With a
    `posterior` (file or Posterior) the model's quantizable layers become Bayesian layers with its μ and σ
    and every prediction averages `samples` weight draws.

    >>> evaluate("digit-cnn", "mnist:test", max_examples=500)["accuracy"]  # doctest: +SKIP
    0.994
    """
    spec = data if isinstance(data, DataSpec) else DataSpec.parse(data) if isinstance(data, str) else None
    dataset = load_dataset(spec) if spec is not None else data  # data first: it fails faster than a model load
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    _check_compatible(loaded, dataset, spec or DataSpec(dataset.name, dataset.split))
    result: dict[str, Any] = {"model": loaded.key, "data": str(spec or f"{dataset.name}:{dataset.split}")}
    if isinstance(dataset, TextData) and loaded.task != Task.CAUSAL_LM:
        result["max_length"] = loaded.max_length or 512  # where texts are cut: a model tuned on shorter ones needs less
    if posterior is not None:
        from bayesquant.posterior import Posterior, bayesian_from_posterior

        post = posterior if isinstance(posterior, Posterior) else Posterior.load(posterior)
        loaded.module = bayesian_from_posterior(loaded.module, post, loaded.family)
        result["posterior"] = str(posterior) if not isinstance(posterior, Posterior) else post.meta.get("method")
    set_dequant_cache(loaded.module, True)  # packed layers: dequantize once, not at every forward pass
    try:
        if loaded.task == Task.CAUSAL_LM:
            result |= evaluate_lm(loaded, dataset, seq_len, max_windows)
        else:
            ref = None
            if reference is not None:
                ref = reference if isinstance(reference, LoadedModel) else load_model(reference)
            result |= evaluate_classifier(loaded, dataset.subset(max_examples), samples, ref)
    finally:
        set_dequant_cache(loaded.module, False)
    return result
