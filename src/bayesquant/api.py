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

from bayesquant.config import Method, QuantizeConfig
from bayesquant.data.calibration import calibration_batches
from bayesquant.errors import UserError
from bayesquant.models import LoadedModel, load_model
from bayesquant.nn.qweight import QuantizedWeight
from bayesquant.registry import Registry
from bayesquant.solvers.gptq import gptq_quantize, gptq_quantize_mixed
from bayesquant.solvers.rtn import codebook_rtn, rtn_quantize
from bayesquant.solvers.sequential import SequentialReport, Solver, quantize_sequential

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodSpec:
    needs_hessian: bool
    make_solver: Callable[[QuantizeConfig, LoadedModel], Solver]


@dataclass
class SolveLog:
    """What a solver decided per module beyond its weights: its groups' widths (mixed methods) and notes."""

    widths: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    notes: dict[str, dict] = dataclasses.field(default_factory=dict)
    plan_meta: dict = dataclasses.field(default_factory=dict)
    posterior: object | None = None  # BayesQ's posterior: the distillation teacher's draws come from it
    distill: dict = dataclasses.field(default_factory=dict)  # what the optional distillation did
    embeddings: dict = dataclasses.field(default_factory=dict)  # quantized embedding tables: name → settings


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


def _rtn(cfg: QuantizeConfig, _loaded: LoadedModel | None = None, _log: SolveLog | None = None) -> Solver:
    bits_for = _bits_for(cfg)

    def solve(name: str, module: nn.Module, _H: torch.Tensor | None) -> QuantizedWeight:
        if cfg.quantizer != "uniform":
            qw = codebook_rtn(_weight(module), bits_for(name), cfg.quantizer, group_size=cfg.group_size)
        else:
            qw = rtn_quantize(_weight(module), bits_for(name), group_size=cfg.group_size, symmetric=cfg.symmetric)
        return _with_shape(qw, module)

    return solve


def _gptq(cfg: QuantizeConfig, _loaded: LoadedModel | None = None, _log: SolveLog | None = None) -> Solver:
    if cfg.grid != "minmax" or cfg.quantizer != "uniform" or (cfg.plan and _plan_granularity(cfg.plan) == "column"):
        return _gptq_columns(cfg)
    bits_for = _bits_for(cfg)

    def solve(name: str, module: nn.Module, H: torch.Tensor | None) -> QuantizedWeight:
        assert H is not None
        result = gptq_quantize(
            _weight(module), H, bits_for(name), group_size=cfg.group_size, symmetric=cfg.symmetric,
            act_order=cfg.act_order, static_groups=cfg.static_groups, damp=cfg.damp, block_size=cfg.block_size,
        )  # fmt: skip
        return _with_shape(result.qweight, module)

    return solve


def _plan_granularity(path: str) -> str:
    from bayesquant.allocation.plan import Plan

    return Plan.load(path).granularity


def _gptq_columns(cfg: QuantizeConfig, widths_for=None, importance_for=None, log: SolveLog | None = None) -> Solver:
    """GPTQ through the mixed-width solver: one width per input column (a column plan, or BayesQ's allocation),
    or one per module; grids "minmax" or "mse" (weighted by `importance_for(name)`, default diag H)."""
    if widths_for is None:
        if cfg.plan is not None and _plan_granularity(cfg.plan) == "column":
            from bayesquant.allocation.plan import Plan

            modules = Plan.load(cfg.plan).modules
            widths_for = lambda name, cols: torch.tensor(modules[name])  # noqa: E731
        else:
            bits_for = _bits_for(cfg)
            widths_for = lambda name, cols: torch.full((cols,), bits_for(name))  # noqa: E731
    identity = cfg.method == Method.BAYESQ and cfg.solver == "rtn"

    def solve(name: str, module: nn.Module, H: torch.Tensor | None) -> QuantizedWeight:
        W = _weight(module)
        cols = W.shape[1]
        widths = widths_for(name, cols)
        if widths.shape != (cols,):
            raise UserError(f"--plan: module {name} has {cols} input columns; the plan gives {len(widths)} widths")
        if identity or H is None:  # no error feedback: every column rounded on its own (RTN on the same grids)
            H = torch.eye(cols)
        imp = importance_for(name, W.shape) if importance_for is not None else None
        result = gptq_quantize_mixed(
            W, H, widths, group_size=cfg.group_size, act_order=bool(cfg.act_order), damp=cfg.damp,
            block_size=cfg.block_size, grid=cfg.grid, importance=imp, symmetric=cfg.symmetric, codebook=_codebook(cfg),
        )  # fmt: skip
        if log is not None:
            log.widths[name] = widths.tolist()
        return _with_shape(result.qweight, module)

    return solve


def _codebook(cfg: QuantizeConfig) -> str | None:
    """The mixed solver's codebook: None for affine grids (--quantizer uniform), else the codebook's name."""
    return None if cfg.quantizer == "uniform" else cfg.quantizer


def _baq(cfg: QuantizeConfig, loaded: LoadedModel, log: SolveLog) -> Solver:
    """BAQ (`bayesquant.solvers.mixed`): per layer, a GPTQ pass at the reference width, the equal-loss
    allocation of the layer's budget over its input columns, and the re-quantization at those widths."""
    from bayesquant.allocation.table import Budget
    from bayesquant.solvers.mixed import baq_quantize

    budget = Budget(float(cfg.bits), cfg.budget)
    log.plan_meta = {"allocator": "baq", "budget": {"bits": budget.bits, "kind": budget.kind.value},
                     "rounds": cfg.rounds}  # fmt: skip
    shares: dict[str, float] = {}
    carry = 0.0  # stored bits the layer quantized last left unspent (negative: overspent)
    if cfg.budget == "storable":  # each layer the same code bits plus two width classes' grids and map of its own
        from bayesquant.solvers.mixed import storable_shares

        modules = loaded.family.quantizable_modules(loaded.module)
        shapes = [tuple(_weight(m).shape) for m in modules.values()]
        shares = dict(zip(modules, storable_shares(shapes, budget.bits, cfg.group_size, _codebook(cfg) is not None),
                          strict=True))  # fmt: skip
        log.plan_meta["layer_storable_bits"] = shares

    def solve(name: str, module: nn.Module, H: torch.Tensor | None) -> QuantizedWeight:
        nonlocal carry
        assert H is not None
        n = _weight(module).numel()
        # a storable share is met only up to the layer's granularity (a grid per row is 32/columns bits per
        # weight): what one layer leaves unspent goes to the next, so the model meets its budget
        layer_budget = Budget(shares[name] + carry / n, "storable") if shares else budget
        result, widths, trace = baq_quantize(
            _weight(module), H, layer_budget, group_size=cfg.group_size, rounds=cfg.rounds, min_bits=cfg.min_bits,
            max_bits=cfg.max_bits, act_order=bool(cfg.act_order), damp=cfg.damp, block_size=cfg.block_size,
            grid=cfg.grid, symmetric=cfg.symmetric, codebook=_codebook(cfg),
        )  # fmt: skip
        if shares:
            carry = (layer_budget.bits - trace.spent[trace.kept]) * n
        log.widths[name] = widths.tolist()
        log.notes[name] = {"round_bits": trace.bits, "round_loss": trace.loss, "kept_round": trace.kept,
                           "met_budget": trace.met_budget, "budget": layer_budget.bits}  # fmt: skip
        if not trace.met_budget:
            msg = "baq: %s (%d×%d) cannot meet the %s budget of %.2f bits (its grids alone cost more); kept %.2f"
            logging.getLogger(__name__).warning(msg, name, *_weight(module).shape, layer_budget.kind.value,
                                                layer_budget.bits, trace.spent[trace.kept])  # fmt: skip
        return _with_shape(result.qweight, module)

    return solve


def _bayesq(cfg: QuantizeConfig, loaded: LoadedModel, log: SolveLog) -> Solver:
    """BayesQ: posterior → closed-form posterior-expected cost table → allocation of the whole model's budget
    (knapsack by default) → precision-weighted grids → rounding with GPTQ error feedback (or RTN)."""
    from bayesquant.allocation.costs import posterior_cost_table
    from bayesquant.posterior.base import Posterior

    t = time.perf_counter()
    if cfg.posterior is not None:
        post = Posterior.load(cfg.posterior)
        post.check_model(loaded.family.quantizable_modules(loaded.module))
    else:
        n = cfg.posterior_nsamples or (16 if loaded.task.value == "causal_lm" else None)
        method = "laplace-layerwise" if loaded.task.value == "text_embedding" else "laplace-diag"
        curvature = "ggn" if loaded.task.value != "causal_lm" else "fisher"  # labels: the model's own predictive
        post = estimate_posterior(loaded, method, calib=cfg.calib, nsamples=n, seq_len=cfg.seq_len, seed=cfg.seed,
                                  curvature=curvature, prior_precision="marglik",
                                  mc_samples=cfg.posterior_mc_samples)  # fmt: skip
    posterior_seconds = time.perf_counter() - t
    log.posterior = post
    if cfg.metric == "mc_task_loss":  # measured per layer on the calibration data (labelled: the task's NLL)
        table = task_loss_table(loaded, post, cfg.calib, cfg.nsamples, bits=_candidates(cfg), quantizer=cfg.quantizer,
                                group_size=cfg.group_size, seed=cfg.seed)  # fmt: skip
    else:
        table = posterior_cost_table(post, granularity=cfg.granularity, metric=cfg.metric, bits=_candidates(cfg),
                                     quantizer=cfg.quantizer, group_size=cfg.group_size,
                                     progress=_progress("cost table"))  # fmt: skip
    alloc = _allocate_exactly(table, post, cfg)
    per_module = alloc.per_module()
    storable = alloc.extra.get("storable_bits_exact", alloc.storable_bits)
    log.plan_meta = {"allocator": cfg.allocator, "budget": {"bits": float(cfg.bits), "kind": cfg.budget},
                     "nominal_bits": alloc.nominal_bits, "storable_bits_estimate": storable,
                     "objective": alloc.objective, "metric": cfg.metric, "posterior": post.meta,
                     "posterior_seconds": posterior_seconds,
                     "allocation_seconds": time.perf_counter() - t - posterior_seconds}  # fmt: skip

    def widths_for(name: str, cols: int) -> torch.Tensor:
        w = per_module[name]
        return torch.tensor(w if len(w) == cols else w * cols)

    def importance_for(name: str, shape: tuple[int, ...]) -> torch.Tensor:  # the weights of the grid fit
        return post.precision(name).float().reshape(shape)

    return _gptq_columns(cfg, widths_for, importance_for, log)


def task_loss_table(
    loaded: LoadedModel,
    post,
    calib: str | None,
    nsamples: int | None,
    *,
    bits: tuple[int, ...],
    quantizer: str = "uniform",
    group_size: int | None = None,
    samples: int = 1,
    seed: int = 0,
):
    """The Monte-Carlo task-loss cost table (`allocation.costs.mc_task_loss_table`, one row per layer): the
    increase of the calibration NLL when one layer is rounded, the others drawn from the posterior."""
    from bayesquant.allocation.costs import mc_task_loss_table, nll_loss
    from bayesquant.data.calibration import labelled_batches

    if loaded.task.value not in ("image_classification", "text_classification", "causal_lm"):
        raise UserError(f"--metric mc_task_loss: {loaded.key} has no task loss; use another --metric")
    batches = labelled_batches(loaded, calib, nsamples, seed=seed)
    if not batches.labels_valid:
        raise UserError(f"--calib {calib}: its labels are not {loaded.key}'s classes")
    likelihood = "causal_lm" if loaded.task.value == "causal_lm" else "classification"
    modules = loaded.family.quantizable_modules(loaded.module)
    return mc_task_loss_table(loaded.module, post, modules, nll_loss(batches, likelihood), bits=bits,
                              quantizer=quantizer, group_size=group_size, samples=samples, seed=seed,
                              progress=_progress("task-loss table"))  # fmt: skip


def _progress(desc: str) -> Callable:
    """A progress bar over a table's modules (a language model's table takes minutes: Lloyd–Max codebooks at
    every width, or a forward pass per module and width)."""
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=desc, unit="module", mininterval=1.0, disable=len(items) < 8)


def _allocate_exactly(table, post, cfg: QuantizeConfig):
    """The allocation of `cfg.bits` over `table`; a storable budget is met as the saved model counts it, each
    layer's stored bits measured by `mixed_stored_bits` (partial grids or codebooks of each width class and the
    column permutation included), with width classes merged where their grids cost more than they gain
    (`allocation.classes.allocate_storable`)."""
    from bayesquant.allocation.allocators import allocate
    from bayesquant.allocation.classes import allocate_storable
    from bayesquant.allocation.table import Budget
    from bayesquant.solvers.mixed import mixed_stored_bits

    if cfg.budget == "nominal":
        return allocate(table, Budget(float(cfg.bits)), cfg.allocator, min_bits=cfg.min_bits, max_bits=cfg.max_bits)
    codebook = _codebook(cfg) is not None
    act_order = bool(cfg.act_order) and cfg.solver != "rtn"  # rtn rounds with H = I: processing order = natural

    def layer_bits(name: str, widths: torch.Tensor) -> float:
        rows = post.mean[name].shape[0]
        cols = post.mean[name].numel() // rows
        w = widths if len(widths) == cols else widths.repeat(cols)
        return mixed_stored_bits(w, rows, cfg.group_size, codebook, act_order)

    n = sum(post.mean[name].numel() for name in post.names)
    alloc = allocate_storable(table, float(cfg.bits), layer_bits, n, cfg.allocator, min_bits=cfg.min_bits,
                              max_bits=cfg.max_bits)  # fmt: skip
    stored = alloc.extra["storable_bits_exact"]
    if abs(stored - float(cfg.bits)) > 0.01:  # coarse groups (one width per layer) or widths that cannot go lower
        log.warning("--bits %s --budget storable: not met; the nearest allocation stores %.3f bits per weight%s",
                    cfg.bits, stored, " (one width per layer; --granularity column comes closer)"
                    if table.granularity == "layer" else "")  # fmt: skip
    return alloc


def _candidates(cfg: QuantizeConfig) -> tuple[int, ...]:
    return tuple(b for b in (1, 2, 3, 4, 5, 6, 8) if (cfg.min_bits or 2) <= b <= (cfg.max_bits or 8))


METHODS.register("rtn", MethodSpec(needs_hessian=False, make_solver=_rtn))
METHODS.register("gptq", MethodSpec(needs_hessian=True, make_solver=_gptq))
METHODS.register("baq", MethodSpec(needs_hessian=True, make_solver=_baq))
METHODS.register("bayesq", MethodSpec(needs_hessian=True, make_solver=_bayesq))


@dataclass
class QuantizeResult:
    """The quantized model (packed modules swapped in), what was done, and how long it took."""

    model: LoadedModel
    config: QuantizeConfig
    report: SequentialReport
    seconds: float
    calib_seconds: float
    log: SolveLog = dataclasses.field(default_factory=SolveLog)

    def save(self, directory: str | Path) -> Path:
        from bayesquant.io import save_quantized

        plan: dict = {}
        for m in self.report.modules:
            widths = self.log.widths.get(m.name)
            plan[m.name] = {"bits": round(m.nominal_bits) if widths is None else m.nominal_bits,
                            "group_size": self.config.group_size}  # fmt: skip
            if widths is not None and len(set(widths)) > 1:
                plan[m.name]["column_bits"] = widths
        extra = {"config": self.config.to_dict(), "seconds": self.seconds, "calib_seconds": self.calib_seconds}
        if self.log.plan_meta:
            extra["allocation"] = self.log.plan_meta
        if self.log.notes:
            extra["notes"] = self.log.notes
        if self.log.distill:
            extra["distill"] = self.log.distill
        if self.log.embeddings:
            extra["embeddings"] = self.log.embeddings
        return save_quantized(
            self.model, directory, key=self.model.key, method=self.config.method.value, plan=plan, extra=extra
        )


def quantize(model: str | LoadedModel, config: QuantizeConfig) -> QuantizeResult:
    """Quantize every quantizable module of `model` (zoo key or LoadedModel) as `config` says."""
    from bayesquant.nn.layers import quantize_module_inplace

    start = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    config = config.for_model(loaded.family)
    spec = METHODS.get(config.method.value)
    solve_log = SolveLog()
    solve = spec.make_solver(config, loaded, solve_log)
    if config.plan is not None:
        from bayesquant.allocation.plan import Plan

        Plan.load(config.plan).check_modules(list(loaded.family.quantizable_modules(loaded.module)))
    embeddings = {}
    if config.embedding_bits is not None:  # checked now: a tied table fails in seconds, not after the method
        from bayesquant.solvers.embedding import embedding_targets

        embeddings = embedding_targets(loaded.module)
        quantized = set(loaded.family.quantizable_modules(loaded.module))
        for name, table in embeddings.items():
            if both := sorted(quantized & set(table.tied)):
                raise UserError(
                    f"--embedding-bits: {name} is tied to {', '.join(both)}, which --method {config.method.value} "
                    "quantizes as a layer; the shared weight cannot take both"
                )
    batches: list = []
    needs_hessian = spec.needs_hessian and not (config.method == Method.BAYESQ and config.solver == "rtn")
    tied = any(t.tied for t in embeddings.values())  # a tied table is rounded for its output layer: calibration
    if needs_hessian or config.distill_steps or tied:
        batches = calibration_batches(loaded, config.calib, config.nsamples, config.seq_len, config.seed)
    teacher = None
    if config.distill_steps:  # from the float model, before the driver overwrites its weights
        from bayesquant.solvers.distill import posterior_teacher

        modules = loaded.family.quantizable_modules(loaded.module)
        teacher = posterior_teacher(loaded.module, batches, solve_log.posterior, modules,
                                    samples=config.distill_samples, predictive=config.distill_predictive,
                                    temperature=config.distill_temperature, seed=config.seed)  # fmt: skip
    calib_seconds = time.perf_counter() - start
    if embeddings:  # before the layers: their calibration inputs then come from the rounded tables
        solve_log.embeddings = quantize_embeddings(loaded.module, embeddings, config, batches)
    report = quantize_sequential(
        loaded.module,
        loaded.family,
        batches if needs_hessian else [],
        solve,
        needs_hessian=needs_hessian,
        desc=config.method.value,
    )
    for name, qw in report.qweights.items():
        quantize_module_inplace(loaded.module, name, qw)
    if teacher is not None:
        from bayesquant.solvers.distill import distill

        t = time.perf_counter()
        done = distill(loaded.module, batches, teacher, config.distill_settings)
        solve_log.distill = {**done.as_dict(), "teacher_samples": teacher.samples,
                             "seconds": time.perf_counter() - t}  # fmt: skip
    return QuantizeResult(loaded, config, report, time.perf_counter() - start, calib_seconds, solve_log)


def quantize_embeddings(model: nn.Module, tables: dict, config: QuantizeConfig, batches: list | None = None) -> dict:
    """Round every table of `tables` (`embedding_targets`) and swap in its QuantEmbedding, and a QuantTiedLinear
    for every output layer tied to it; returns what was done, by name. A tied table is rounded by GPTQ for its
    output layer, with that layer's input Hessian on the calibration `batches` (needed then)."""
    from bayesquant.nn.layers import QuantTiedLinear, quantize_module_inplace, set_submodule
    from bayesquant.solvers.embedding import EMBEDDING_GRID, output_hessian, quantize_embedding

    done = {}
    for name, table in tables.items():
        t = time.perf_counter()
        H = None
        if table.tied:
            if not batches:
                raise UserError(f"--embedding-bits: {name} is tied to {table.tied[0]}; its rounding needs calibration")
            H = output_hessian(model, model.get_submodule(table.tied[0]), batches)
        qw = quantize_embedding(table.module, config.embedding_bits, config.embedding_group_size, H)
        packed = quantize_module_inplace(model, name, qw)
        for layer in table.tied:
            set_submodule(model, layer, QuantTiedLinear.from_float(model.get_submodule(layer), packed, name))
        rounding = "gptq-minmax" if H is not None else EMBEDDING_GRID
        done[name] = {"bits": config.embedding_bits, "group_size": config.embedding_group_size, "grid": rounding,
                      "shape": list(qw.shape), "tied": list(table.tied),
                      "seconds": time.perf_counter() - t}  # fmt: skip
    return done


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
    mc_samples: int | None = None,
    progress: bool = True,
):
    """A weight posterior for a zoo model, fitted on `nsamples` examples of the `calib` SPEC.

    method: "laplace-diag" (curvature "fisher" | "ggn"), "laplace-layerwise" (forward-only, diag 2XXᵀ) or
    "vi" (mean-field VI for `epochs` passes; `vi_options` go to `MeanFieldVI`). `n_data` defaults to the size of
    the calib SPEC (its non-overlapping windows for text): σ² = 1/(n_data·mean curvature + λ). `mc_samples`:
    labels drawn per example where the GGN is a Monte-Carlo estimate (None: `laplace.MC_GGN_SAMPLES`), seeded by
    `seed`.

    >>> post = estimate_posterior("lenet5-mnist", "laplace-diag", nsamples=1024)  # doctest: +SKIP
    >>> post.save("lenet.posterior.safetensors")  # doctest: +SKIP
    """
    from bayesquant.data.calibration import labelled_batches
    from bayesquant.errors import UserError
    from bayesquant.posterior.laplace import MC_GGN_SAMPLES, DiagLaplace

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
        prior_precision=prior_precision, n_data=n_data, seed=seed, progress=progress,
        mc_samples=MC_GGN_SAMPLES if mc_samples is None else mc_samples,
    )  # fmt: skip
    return lap.fit(batches).posterior
