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
from bayesquant.solvers.rtn import rtn_quantize
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


def _rtn(cfg: QuantizeConfig) -> Solver:
    def solve(_name: str, module: nn.Module, _H: torch.Tensor | None) -> QuantizedWeight:
        qw = rtn_quantize(_weight(module), cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric)
        return _with_shape(qw, module)

    return solve


def _gptq(cfg: QuantizeConfig) -> Solver:
    def solve(_name: str, module: nn.Module, H: torch.Tensor | None) -> QuantizedWeight:
        assert H is not None
        result = gptq_quantize(
            _weight(module), H, cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric,
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

        plan = {m.name: {"bits": self.config.bits, "group_size": self.config.group_size} for m in self.report.modules}
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
