"""Frozen, validated configurations. Strings from the command line become these in `cli.py`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from enum import Enum

from bayesquant.errors import UserError

CONFIG_VERSION = 1
QUANTIZER_CHOICES = ("uniform", "quantile", "lloyd_max")


GRID_CHOICES = ("minmax", "mse")
SOLVER_CHOICES = ("gptq", "rtn")
MIXED_METHODS = ("bayesq", "baq")  # methods whose --bits is a (fractional) budget, not one width
METRIC_CHOICES = ("expected_loss", "expected_mse", "mc_task_loss")  # bayesq's cost tables


class Method(str, Enum):
    RTN = "rtn"
    GPTQ = "gptq"
    BAYESQ = "bayesq"
    BAQ = "baq"


def _choice(enum: type[Enum], value: object, argument: str) -> Enum:
    try:
        return enum(value)
    except ValueError:
        valid = ", ".join(e.value for e in enum)
        raise UserError(f"{argument} {value!r}: unknown; valid: {valid}") from None


@dataclass(frozen=True)
class QuantizeConfig:
    """One quantization run.

    bits: code width 1..8. group_size: weights per group along the input dimension (None = per output
    channel). act_order / static_groups / damp / block_size: GPTQ options (the reference's defaults).
    calib: data SPEC for calibration; nsamples: windows (language models), images or articles; None picks
    the task's default (64 windows, 1024 images, 128 articles). seq_len: calibration window length.
    quantizer: the codebook — "uniform" (affine grid), "quantile" (paper (c) §3.3) or "lloyd_max"; with gptq,
    bayesq and baq a codebook is fitted per row of each grid as the solver reaches it, weighted by the
    importances (diag H, or BayesQ's posterior precision), and stored as 2ᵇ float16 levels per row and grid.
    plan: a plan JSON (`bayesquant allocate`) giving each module its own width (then `bits` is ignored).

    Mixed-precision methods (bayesq, baq): `bits` is the budget, a mean number of bits per weight (fractional
    allowed), counted as `budget` says — "nominal" (code bits) or "storable" (codes + grids). grid: the range
    of each uniform grid, "minmax" (the reference's) or "mse" (minimising the importance-weighted error:
    BayesQ's precision-weighted distortion, BAQ's diag-H-weighted error). None: the model family's
    (`for_model`): the search on transformers, min–max on convolutional nets. min_bits/max_bits bound the
    widths. BayesQ: `posterior` a FILE from `bayesquant posterior` (None: a diagonal Laplace posterior is
    fitted on `posterior_nsamples` calibration examples, with `posterior_mc_samples` labels per example where the
    GGN is a Monte-Carlo estimate), `allocator` and `granularity` of the allocation,
    `metric` of its cost table ("expected_loss": the posterior-expected loss increase, closed form, weighting
    each weight's error by the loss curvature h = 1/σ² − λ; "expected_mse": the precision-weighted distortion,
    weighting by 1/σ²; "mc_task_loss": the measured
    increase of the calibration NLL per layer, others drawn from the posterior — needs granularity "layer"),
    `solver` "gptq" (error feedback) or "rtn". BAQ: `rounds` of self-correction after the reference pass.

    Distillation (any method; BayesQ's optional last step): `distill_steps` Adam steps (0 = off) at `distill_lr`
    tune the float tensors left after quantization (`distill_params`: "bias_norm", or "bias_norm_grid" with the
    grids' scales and codebooks) on the calibration inputs towards the teacher — the posterior predictive over
    `distill_samples` draws of BayesQ's posterior (`distill_predictive` "linearized": the GLM predictive, or
    "sampled": the network at the drawn weights; σ² scaled by `distill_temperature` τ), or the float model (τ = 0,
    the default — measured better on accuracy, docs/results.md —, `distill_samples` 0, or a method without a
    posterior).

    Embeddings (any method, off by default): `embedding_bits` rounds every nn.Embedding table to that width with
    one grid per row, or per `embedding_group_size` entries of a row (`bayesquant.solvers.embedding`). They are
    reported apart from the layers the method quantizes, so `bits` and the storable bits keep counting those.
    """

    method: Method = Method.GPTQ
    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False
    act_order: bool | None = None  # None: off for rtn/gptq (the reference), on for bayesq/baq
    static_groups: bool = False
    damp: float = 0.01
    block_size: int = 128
    calib: str | None = None
    nsamples: int | None = None
    seq_len: int = 512
    seed: int = 0
    quantizer: str = "uniform"
    plan: str | None = None
    budget: str = "nominal"
    grid: str | None = None  # None: minmax for rtn/gptq (the reference), the family's for bayesq/baq
    min_bits: int | None = None
    max_bits: int | None = None
    posterior: str | None = None
    posterior_nsamples: int | None = None
    posterior_mc_samples: int | None = None
    allocator: str = "knapsack"
    granularity: str = "column"
    metric: str = "expected_loss"
    solver: str = "gptq"
    rounds: int = 1
    distill_steps: int = 0
    distill_lr: float = 1e-3
    distill_samples: int = 8
    distill_params: str = "bias_norm_grid"
    distill_predictive: str = "linearized"
    distill_temperature: float = 0.0
    embedding_bits: int | None = None
    embedding_group_size: int | None = None
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", _choice(Method, self.method, "--method"))
        if self.mixed:
            if isinstance(self.bits, bool) or not isinstance(self.bits, int | float) or not 1 <= self.bits <= 8:
                raise UserError(f"--bits {self.bits!r}: the {self.method.value} budget must be a number from 1 to 8")
        elif isinstance(self.bits, float) and self.bits.is_integer():
            object.__setattr__(self, "bits", int(self.bits))
        if not self.mixed and (not isinstance(self.bits, int) or not 1 <= self.bits <= 8):
            raise UserError(
                f"--bits {self.bits!r}: must be an integer from 1 to 8 for --method {self.method.value} "
                "(fractional budgets: --method bayesq or baq)"
            )
        if self.act_order is None:
            object.__setattr__(self, "act_order", self.mixed)
        if self.grid is None and not self.mixed:  # the mixed methods' depends on the model (`for_model`)
            object.__setattr__(self, "grid", "minmax")
        grid = () if self.grid is None else (("--grid", self.grid, GRID_CHOICES),)  # None: settled per model
        for arg, value, valid in (("--budget", self.budget, ("nominal", "storable")), *grid,
                                  ("--solver", self.solver, SOLVER_CHOICES),
                                  ("--granularity", self.granularity, ("layer", "column")),
                                  ("--metric", self.metric, METRIC_CHOICES)):  # fmt: skip
            if value not in valid:
                raise UserError(f"{arg} {value!r}: unknown; valid: {', '.join(valid)}")
        for arg, value in (("--min-bits", self.min_bits), ("--max-bits", self.max_bits)):
            if value is not None and not 1 <= value <= 8:
                raise UserError(f"{arg} {value}: must be from 1 to 8")
        if self.metric == "mc_task_loss" and self.granularity != "layer":
            raise UserError("--metric mc_task_loss: measured per layer; add --granularity layer")
        if self.distill_samples < 0:
            raise UserError(f"--distill-samples {self.distill_samples}: must be ≥ 0 (0: the float model teaches)")
        from bayesquant.solvers.distill import check_teacher

        _ = self.distill_settings  # validates steps, lr and params
        check_teacher(self.distill_predictive, self.distill_temperature)
        if self.rounds < 0:
            raise UserError(f"--rounds {self.rounds}: must be ≥ 0")
        if self.posterior_nsamples is not None and self.posterior_nsamples < 1:
            raise UserError(f"--posterior-nsamples {self.posterior_nsamples}: must be ≥ 1")
        if self.posterior_mc_samples is not None and self.posterior_mc_samples < 1:
            raise UserError(f"--posterior-mc-samples {self.posterior_mc_samples}: must be ≥ 1")
        if self.plan is not None and self.mixed:
            raise UserError(f"--plan: --method {self.method.value} makes its own plan; apply plans with rtn or gptq")
        if self.group_size is not None and self.group_size < 1:
            raise UserError(f"--group-size {self.group_size}: must be ≥ 1 (omit it for per-channel grids)")
        if not 0.0 <= self.damp < 1.0:
            raise UserError(f"--damp {self.damp}: must be in [0, 1)")
        if self.block_size < 1:
            raise UserError(f"--block-size {self.block_size}: must be ≥ 1")
        if self.nsamples is not None and self.nsamples < 1:
            raise UserError(f"--nsamples {self.nsamples}: must be ≥ 1")
        if self.quantizer not in QUANTIZER_CHOICES:
            raise UserError(f"--quantizer {self.quantizer!r}: unknown; valid: {', '.join(QUANTIZER_CHOICES)}")
        if self.quantizer != "uniform" and self.static_groups:
            raise UserError(f"--quantizer {self.quantizer}: codebooks are fitted as GPTQ reaches each group; "
                            "drop --static-groups")  # fmt: skip
        if self.static_groups and self.group_size is None:
            raise UserError("--static-groups needs --group-size")
        eb = self.embedding_bits
        if eb is not None and (isinstance(eb, bool) or not isinstance(eb, int) or not 1 <= eb <= 8):
            raise UserError(f"--embedding-bits {eb!r}: must be an integer from 1 to 8 (omit it to keep them float)")
        if self.embedding_group_size is not None:
            if eb is None:
                raise UserError("--embedding-group-size: only with --embedding-bits")
            if self.embedding_group_size < 1:
                raise UserError(f"--embedding-group-size {self.embedding_group_size}: must be ≥ 1 (omit: per row)")

    @property
    def mixed(self) -> bool:
        """Whether `bits` is a budget shared out by an allocator (bayesq, baq)."""
        return self.method.value in MIXED_METHODS

    @property
    def distill_settings(self):
        from bayesquant.solvers.distill import DistillSettings

        return DistillSettings(self.distill_steps, self.distill_lr, self.distill_params)

    def for_model(self, family) -> QuantizeConfig:
        """This configuration with what depends on the model settled: the mixed methods' grid range, when not
        given, is the family's (`Family.mixed_grid`)."""
        if self.grid is not None:
            return self
        return replace(self, grid=family.mixed_grid)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["method"] = self.method.value
        return d


@dataclass(frozen=True)
class TrainConfig:
    """Both training stages and the evaluation: epochs, Adam learning rates, batch size, prior N(0, prior_std²),
    initial σ, KL-annealing fraction, Monte-Carlo samples T, seed (pretraining init, batch order, weight noise);
    stage 2's learning rate of σ (`sigma_lr`, None: `lr`) and weight draws per batch (`draws`, whole-weight modes),
    see `bayesquant.bnn.qbnn.train_qbnn`. Prior and σ step default to the recipe measured in docs/results.md:
    N(0, 0.2²) and 10⁻² (whole weight draws give σ a far noisier gradient than μ; docs/methods.md)."""

    pretrain_epochs: int = 5
    epochs: int = 5
    lr: float = 1e-3
    pretrain_lr: float = 1e-3
    batch_size: int = 128
    prior_std: float = 0.2
    init_std: float = 0.02
    kl_anneal: float = 0.5
    samples: int = 32
    seed: int = 0
    sigma_lr: float | None = 1e-2
    draws: int = 1

    def __post_init__(self) -> None:
        for name in ("pretrain_epochs", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UserError(f"--{name.replace('_', '-')} {v!r}: must be a non-negative integer")
        for name in ("batch_size", "samples", "draws"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"--{name.replace('_', '-')} {v!r}: must be a positive integer")
        for name in ("lr", "pretrain_lr", "prior_std", "init_std", "sigma_lr"):
            v = getattr(self, name)
            if v is None and name == "sigma_lr":
                continue
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise UserError(f"--{name.replace('_', '-')} {v!r}: must be a positive number")
        if not 0 <= self.kl_anneal <= 1:
            raise UserError(f"--kl-anneal {self.kl_anneal!r}: must be a fraction of the steps in [0, 1]")
        if self.draws > self.batch_size:
            raise UserError(f"--draws {self.draws}: at most --batch-size ({self.batch_size}) draws per batch")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
