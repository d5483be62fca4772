"""The public verbs: `quantize` a model with a config, then `save` it; `evaluate` lives in bayesquant.eval.

>>> from bayesquant.api import quantize
>>> from bayesquant.config import QuantizeConfig
>>> result = quantize("digit-cnn", QuantizeConfig(method="gptq", bits=4, nsamples=256))  # doctest: +SKIP
>>> result.save("out/digit-cnn-gptq4")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bayesquant.config import QuantizeConfig
from bayesquant.data.calibration import calibration_batches
from bayesquant.models import LoadedModel, load_model
from bayesquant.nn.qweight import QuantizedWeight
from bayesquant.registry import Registry
from bayesquant.solvers.gptq import gptq_quantize
from bayesquant.solvers.rtn import codebook_rtn, rtn_quantize
from bayesquant.solvers.sequential import SequentialReport, Solver, quantize_sequential

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodSpec:
    needs_hessian: bool
    make_solver: Callable[[QuantizeConfig], Solver]


METHODS: Registry[MethodSpec] = Registry("method", "--method")


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().flatten(1)  # (out, in·kh·kw) for Conv2d


def _with_shape(qw: QuantizedWeight, module: nn.Module) -> QuantizedWeight:
    return dataclasses.replace(qw, shape=tuple(module.weight.shape))


def _bits_for(cfg: QuantizeConfig) -> Callable[[str], int]:
    """Module name → width: the plan's, else the config's one width."""
    if cfg.plan is None:
        return lambda _name: cfg.bits
    from bayesquant.allocation.plan import Plan

    plan = Plan.load(cfg.plan)
    return plan.layer_bits


def _rtn(cfg: QuantizeConfig) -> Solver:
    bits_for = _bits_for(cfg)

    def solve(name: str, module: nn.Module, _H: torch.Tensor | None) -> QuantizedWeight:
        if cfg.quantizer != "uniform":
            qw = codebook_rtn(_weight(module), bits_for(name), cfg.quantizer, group_size=cfg.group_size)
        else:
            qw = rtn_quantize(_weight(module), bits_for(name), group_size=cfg.group_size, symmetric=cfg.symmetric)
        return _with_shape(qw, module)

    return solve


def _gptq(cfg: QuantizeConfig) -> Solver:
    bits_for = _bits_for(cfg)

    def solve(name: str, module: nn.Module, H: torch.Tensor | None) -> QuantizedWeight:
        assert H is not None
        result = gptq_quantize(
            _weight(module), H, bits_for(name), group_size=cfg.group_size, symmetric=cfg.symmetric,
            act_order=cfg.act_order, static_groups=cfg.static_groups, damp=cfg.damp, block_size=cfg.block_size,
        )  # fmt: skip
        return _with_shape(result.qweight, module)

    return solve


METHODS.register("rtn", MethodSpec(needs_hessian=False, make_solver=_rtn))
METHODS.register("gptq", MethodSpec(needs_hessian=True, make_solver=_gptq))


@dataclass
class QuantizeResult:
    """The quantized model (packed modules swapped in), what was done, and how long it took."""

    model: LoadedModel
    config: QuantizeConfig
    report: SequentialReport
    seconds: float
    calib_seconds: float

    def save(self, directory: str | Path) -> Path:
        from bayesquant.io import save_quantized

        plan = {
            m.name: {"bits": round(m.nominal_bits), "group_size": self.config.group_size} for m in self.report.modules
        }
        extra = {"config": self.config.to_dict(), "seconds": self.seconds, "calib_seconds": self.calib_seconds}
        return save_quantized(
            self.model.module, directory, key=self.model.key, method=self.config.method.value, plan=plan, extra=extra
        )


def quantize(model: str | LoadedModel, config: QuantizeConfig) -> QuantizeResult:
    """Quantize every quantizable module of `model` (zoo key or LoadedModel) as `config` says."""
    from bayesquant.nn.layers import quantize_module_inplace

    start = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    spec = METHODS.get(config.method.value)
    solve = spec.make_solver(config)
    if config.plan is not None:
        from bayesquant.allocation.plan import Plan

        Plan.load(config.plan).check_modules(list(loaded.family.quantizable_modules(loaded.module)))
    batches: list = []
    if spec.needs_hessian:
        batches = calibration_batches(loaded, config.calib, config.nsamples, config.seq_len, config.seed)
    calib_seconds = time.perf_counter() - start
    report = quantize_sequential(
        loaded.module, loaded.family, batches, solve, needs_hessian=spec.needs_hessian, desc=config.method.value
    )
    for name, qw in report.qweights.items():
        quantize_module_inplace(loaded.module, name, qw)
    return QuantizeResult(loaded, config, report, time.perf_counter() - start, calib_seconds)


POSTERIOR_METHODS = ("laplace-diag", "laplace-layerwise", "vi")
_LIKELIHOOD = {"causal_lm": "causal_lm", "image_classification": "classification"}
_LIKELIHOOD["text_classification"] = "classification"


def estimate_posterior(
    model: str | LoadedModel,
    method: str = "laplace-diag",
    *,
    calib: str | None = None,
    nsamples: int | None = None,
    seq_len: int = 512,
    seed: int = 0,
    batch_size: int | None = None,
    curvature: str = "fisher",
    prior_precision: float | str = "marglik",
    n_data: int | None = None,
    epochs: int = 1,
    vi_options: dict | None = None,
    progress: bool = True,
):
    """A weight posterior for a zoo model, fitted on `nsamples` examples of the `calib` SPEC.

    method: "laplace-diag" (curvature "fisher" | "ggn"), "laplace-layerwise" (forward-only, diag 2XXᵀ) or
    "vi" (mean-field VI for `epochs` passes; `vi_options` go to `MeanFieldVI`). `n_data` defaults to the size of
    the calib SPEC (its non-overlapping windows for text): σ² = 1/(n_data·mean curvature + λ).

    >>> post = estimate_posterior("lenet5-mnist", "laplace-diag", nsamples=1024)  # doctest: +SKIP
    >>> post.save("lenet.posterior.safetensors")  # doctest: +SKIP
    """
    from bayesquant.data.calibration import labelled_batches
    from bayesquant.errors import UserError
    from bayesquant.posterior.laplace import DiagLaplace

    if method not in POSTERIOR_METHODS:
        raise UserError(f"--method {method!r}: unknown posterior method; valid: {', '.join(POSTERIOR_METHODS)}")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    if loaded.task.value == "text_embedding" and method != "laplace-layerwise":
        raise UserError(f"--method {method}: {loaded.key} has no output likelihood; use --method laplace-layerwise")
    likelihood = _LIKELIHOOD.get(loaded.task.value, "classification")
    needs_labels = method == "vi" or (method == "laplace-diag" and curvature == "fisher")
    batches = labelled_batches(loaded, calib, nsamples, seq_len, seed, batch_size, shuffle=method == "vi")
    n_data = n_data or batches.n_total  # the posterior of the whole data set; its curvature estimated on nsamples
    if needs_labels and not batches.labels_valid:
        what = "an encoder without a task head" if loaded.task.value == "text_embedding" else "not its classes"
        raise UserError(
            f"--method {method}: {loaded.key} on {calib or 'its default data'} has no usable labels ({what}); "
            "use --method laplace-layerwise, or --curvature ggn (labels from the model's own predictive)"
        )
    if method == "vi":
        from bayesquant.posterior.vi import MeanFieldVI

        vi = MeanFieldVI(loaded, likelihood, n_data=n_data, progress=progress, **(vi_options or {}))
        return vi.fit(batches, epochs=epochs).posterior
    lap = DiagLaplace(
        loaded, likelihood, curvature="layerwise" if method == "laplace-layerwise" else curvature,
        prior_precision=prior_precision, n_data=n_data, progress=progress,
    )  # fmt: skip
    return lap.fit(batches).posterior
