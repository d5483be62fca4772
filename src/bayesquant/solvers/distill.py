"""Calibration-only distillation of a quantized model to the posterior-predictive teacher (BayesQ, optional).

After quantization the codes are fixed; what is left in floating point — biases, normalisation parameters and,
optionally, the grids (uniform scales, codebook levels) — is tuned on the calibration inputs so that the
quantized student matches the teacher

    p_T(y | x) = (1/S) Σ_s softmax(f(x; μ) + J(x)·δ_s),   δ_s ~ N(0, τσ²)

the linearized (GLM) predictive of the Laplace posterior — or, on request, the network at sampled weights
softmax(f(x; μ + δ_s)), which for a diagonal Laplace posterior of a deep net is far worse than the float model
(see docs/methods.md) — and S = 0 or τ = 0 gives the float model's softmax(f(x; μ)),

by minimising KL(p_T ‖ p_student) with Adam, one calibration batch per step. For language models the teacher
keeps the `top_k` most probable tokens per position (renormalised); the loss is then the cross-entropy
−Σ_{k ∈ top-k} p_T,k log q_k, which differs from the KL by the teacher's constant entropy.

The teacher is computed from the float model before quantization (`posterior_teacher`); `distill` runs on the
quantized model afterwards. Grids are tuned in float32 and written back to their float16 storage at the end.

>>> teacher = posterior_teacher(model, batches, post, modules, samples=8)  # doctest: +SKIP
>>> report = distill(qmodel, batches, teacher, DistillSettings(steps=200))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bayesquant.errors import UserError
from bayesquant.nn.layers import QuantModule

log = logging.getLogger(__name__)

Inputs = tuple[tuple, dict[str, Any]]  # (args, kwargs) of one forward call
PARAM_CHOICES = ("bias_norm", "bias_norm_grid")
TOP_K = 64  # teacher tokens kept per position for language models


@dataclass(frozen=True)
class DistillSettings:
    """steps: Adam steps (one calibration batch each, cycling); lr: its learning rate; params: "bias_norm"
    (biases and normalisation parameters) or "bias_norm_grid" (also the quantized layers' scales / codebook
    levels)."""

    steps: int = 200
    lr: float = 1e-3
    params: str = "bias_norm_grid"

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise UserError(f"--distill-steps {self.steps}: must be ≥ 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--distill-lr {self.lr}: must be a positive number")
        if self.params not in PARAM_CHOICES:
            raise UserError(f"--distill-params {self.params!r}: unknown; valid: {', '.join(PARAM_CHOICES)}")


@dataclass
class Teacher:
    """Per calibration batch: dense probabilities (B, C) or, for language models, top-k (probs, indices)."""

    probs: list[Tensor]
    indices: list[Tensor | None]
    samples: int

    @property
    def sparse(self) -> bool:
        return self.indices[0] is not None


@dataclass
class DistillReport:
    steps: int
    params: int
    loss_first: float  # mean loss over the calibration batches before the first step
    loss_last: float  # and after the last
    losses: list[float] = field(default_factory=list)
    kept: bool = True  # False: the loss rose and the tensors were put back as quantized

    def as_dict(self) -> dict:
        return {"steps": self.steps, "params": self.params, "loss_before": self.loss_first,
                "loss_after": self.loss_last, "kept": self.kept}  # fmt: skip


def _as_logits(out: Any) -> Tensor:
    out = out.logits if hasattr(out, "logits") else out
    if not isinstance(out, Tensor) or out.dim() not in (2, 3):
        raise UserError(f"distillation needs logits (B, C) or (B, T, V); the model returned {type(out).__name__}")
    return out.float()


def _logits(model: nn.Module, inputs: Inputs) -> Tensor:
    args, kwargs = inputs
    return _as_logits(model(*args, **kwargs))


PREDICTIVES = ("linearized", "sampled")


def check_teacher(predictive: str, temperature: float) -> None:
    if predictive not in PREDICTIVES:
        raise UserError(f"--distill-predictive {predictive!r}: unknown; valid: {', '.join(PREDICTIVES)}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise UserError(f"--distill-temperature {temperature}: must be ≥ 0 (0: the float model teaches)")


def _linearized(model: nn.Module, inputs: Inputs, modules: dict[str, nn.Module], delta: dict[str, Tensor]) -> Tensor:
    """f(x; μ) + J(x)·δ, the network linearized in the weights of `modules` around their values μ (forward-mode
    AD: about the cost of two forward passes, nothing stored per weight)."""
    from torch.func import functional_call, jvp

    mu = {f"{name}.weight": m.weight.detach() for name, m in modules.items()}
    tangent = {f"{n}.weight": d.to(mu[f"{n}.weight"].dtype) for n, d in delta.items()}
    args, kwargs = inputs
    f0, jd = jvp(lambda w: _as_logits(functional_call(model, w, args, kwargs)), (mu,), (tangent,))
    return f0 + jd


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Transformers' fused attention kernels have no forward-mode derivative: use the eager path meanwhile."""
    hf = [m for m in model.modules() if hasattr(m, "set_attn_implementation") and hasattr(m, "config")]
    before = [getattr(m.config, "_attn_implementation", None) for m in hf]
    try:
        for m in hf:
            m.set_attn_implementation("eager")
        yield
    finally:
        for m, impl in zip(hf, before, strict=True):
            if impl is not None:
                m.set_attn_implementation(impl)


@torch.no_grad()
def posterior_teacher(
    model: nn.Module,
    batches: list[Inputs],
    post: Any = None,
    modules: dict[str, nn.Module] | None = None,
    *,
    samples: int = 8,
    predictive: str = "linearized",
    temperature: float = 1.0,
    seed: int = 0,
    top_k: int = TOP_K,
    progress: bool = True,
) -> Teacher:
    """The posterior-predictive teacher on each batch: the mean softmax over `samples` draws δ ~ N(0, τσ²) of the
    quantizable `modules`' weights around μ (a `Posterior`; τ = `temperature`), of

        "linearized":  f(x; μ) + J(x)·δ       (the GLM predictive of a Laplace posterior, Immer et al. 2021)
        "sampled":     f(x; μ + δ)            (the network at the drawn weights)

    samples = 0 or no posterior: the float model itself, softmax(f(x; μ))."""
    if not batches:
        raise UserError("distillation: no calibration batches (check --calib and --nsamples)")
    check_teacher(predictive, temperature)
    if post is not None:
        post.check_model(modules or {})
    draws = samples if post is not None and temperature > 0 else 0
    scale = math.sqrt(temperature)
    model.eval()

    def delta(s: int) -> dict[str, Tensor]:  # draw s is the same for every batch: its generator is seeded by s
        gen = torch.Generator().manual_seed(seed + s)
        return {n: post.std(n) * scale * torch.randn(post.mean[n].shape, generator=gen) for n in post.names}

    sums: list[Any] = []  # per batch: probabilities (B, C), or (top-k probs, indices) for (B, T, V)
    eager = _eager_attention(model) if draws and predictive == "linearized" else contextlib.nullcontext()
    with eager:
        for inputs in tqdm(batches, desc="teacher", unit="batch", disable=not progress):
            sums.append(_teacher_probs(model, inputs, post, modules, draws, predictive, delta, top_k))
    if isinstance(sums[0], Tensor):
        return Teacher(sums, [None] * len(sums), draws)
    return Teacher([p for p, _ in sums], [i for _, i in sums], draws)


def _teacher_probs(model, inputs, post, modules, draws: int, predictive: str, delta, top_k: int) -> Any:
    """One batch's teacher: probabilities (B, C), or (top-k probabilities, indices) for a (B, T, V) output."""
    if not draws:
        total = torch.softmax(_logits(model, inputs), -1)
    elif predictive == "linearized":
        total = sum(torch.softmax(_linearized(model, inputs, modules, delta(s)), -1) for s in range(draws)) / draws
    else:
        total = 0
        for s in range(draws):
            d = delta(s)
            with post.weights_in(modules, {n: post.mean[n] + d[n] for n in post.names}):
                total = total + torch.softmax(_logits(model, inputs), -1) / draws
    if total.dim() == 3:  # keep the top-k tokens of each position: (B, T, V) does not fit for a whole set
        top = total.topk(min(top_k, total.shape[-1]), dim=-1)
        total = (top.values / top.values.sum(-1, keepdim=True), top.indices)
    return total


def _is_norm(module: nn.Module) -> bool:
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    return isinstance(module, norms) or type(module).__name__.endswith("Norm")


def tunable_parameters(model: nn.Module, params: str = "bias_norm_grid") -> dict[str, Tensor]:
    """The float tensors distillation may change: every `bias`, the parameters of normalisation layers and,
    with "bias_norm_grid", the quantized layers' float16 scales and codebooks (returned as float32 tensors
    that replace them for the duration; `_restore_grids` writes them back)."""
    found: dict[str, Tensor] = {}
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        for pname, p in module.named_parameters(recurse=False):
            if pname == "bias" or _is_norm(module):
                found[prefix + pname] = p
        if params == "bias_norm_grid" and isinstance(module, QuantModule):
            for bname, buf in list(module._buffers.items()):
                if buf is not None and _is_grid(bname):
                    t = buf.detach().float().requires_grad_(True)
                    module._buffers[bname] = t
                    found[prefix + bname] = t
    return found


def _restore_grids(model: nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, QuantModule):
                for bname, buf in list(module._buffers.items()):
                    if buf is not None and buf.dtype == torch.float32 and _is_grid(bname):
                        half = buf.detach().half()
                        if not torch.isfinite(half).all():
                            raise ValueError(f"distillation drove {bname} beyond float16's range")
                        module._buffers[bname] = half
                module._cached = None


def _loss(model: nn.Module, inputs: Inputs, teacher: Teacher, i: int) -> Tensor:
    logq = torch.log_softmax(_logits(model, inputs), -1)
    p = teacher.probs[i]
    if teacher.sparse:
        return -(p * logq.gather(-1, teacher.indices[i])).sum(-1).mean()  # over positions (B, T)
    return F.kl_div(logq, p, reduction="batchmean")


@contextlib.contextmanager
def _only_grad(model: nn.Module, tensors: dict[str, Tensor]) -> Iterator[None]:
    flags = {id(p): p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for t in tensors.values():
            t.requires_grad_(True)
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])


def _groups(tensors: dict[str, Tensor], lr: float) -> list[dict]:
    """Adam's parameter groups: biases and norms at `lr`; each grid at `lr` times its mean magnitude, so a step
    moves a scale or a level by about `lr` of its size (a scale of 10⁻³ would not survive absolute steps)."""
    groups = [{"params": [t for n, t in tensors.items() if not _is_grid(n)], "lr": lr}]
    for n, t in tensors.items():
        if _is_grid(n):
            groups.append({"params": [t], "lr": lr * max(float(t.detach().abs().mean()), 1e-8)})
    return [g for g in groups if g["params"]]


def _is_grid(name: str) -> bool:
    """Whether a (qualified) buffer name is a quantized layer's scale or codebook."""
    return name.rsplit(".", 1)[-1].split("_")[0] in ("scale", "codebook")


def _mean_loss(model: nn.Module, batches: list[Inputs], teacher: Teacher) -> float:
    with torch.no_grad():
        return sum(float(_loss(model, b, teacher, i)) for i, b in enumerate(batches)) / len(batches)


def distill(
    model: nn.Module, batches: list[Inputs], teacher: Teacher, settings: DistillSettings, progress: bool = True
) -> DistillReport:
    """Tune the quantized `model`'s remaining float tensors (`tunable_parameters`) to the `teacher`, in place.
    The model stays in eval mode (batch-norm statistics and dropout as at inference)."""
    if len(teacher.probs) != len(batches):
        raise UserError(f"distillation: {len(batches)} batches but a teacher for {len(teacher.probs)}")
    model.eval()
    tensors = tunable_parameters(model, settings.params)
    state = {k: t.detach().clone() for k, t in tensors.items()}  # to put back if the loss rises
    if not tensors:
        _restore_grids(model)
        raise UserError("distillation: the model has no biases, norms or grids to tune; drop --distill-steps")
    first = _mean_loss(model, batches, teacher)
    losses: list[float] = []
    try:
        with _only_grad(model, tensors):
            opt = torch.optim.Adam(_groups(tensors, settings.lr))
            bar = tqdm(range(settings.steps), desc="distill", unit="step", disable=not progress)
            for step in bar:
                i = step % len(batches)
                opt.zero_grad(set_to_none=True)
                loss = _loss(model, batches[i], teacher, i)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        _restore_grids(model)
    last = _mean_loss(model, batches, teacher)
    n = sum(t.numel() for t in tensors.values())
    log.info("distill: %d steps over %d tensors (%d values); loss %.4f → %.4f", settings.steps, len(tensors), n,
             first, last)  # fmt: skip
    kept = last <= first
    if not kept:  # never hand back a model further from the teacher than the quantized one
        log.warning("distill: the loss rose (%.4g → %.4g); the quantized model's tensors are kept", first, last)
        model.load_state_dict(state, strict=False)
    return DistillReport(settings.steps, n, first, last, losses, kept)
