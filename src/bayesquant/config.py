"""Frozen, validated configurations. Strings from the command line become these in `cli.py`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

from bayesquant.errors import UserError

CONFIG_VERSION = 1
QUANTIZER_CHOICES = ("uniform", "quantile", "lloyd_max")


class Method(str, Enum):
    RTN = "rtn"
    GPTQ = "gptq"


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
    quantizer: the codebook of RTN — "uniform" (affine grid), "quantile" (paper (c) §3.3) or "lloyd_max".
    plan: a plan JSON (`bayesquant allocate`) giving each module its own width (then `bits` is ignored).
    """

    method: Method = Method.GPTQ
    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False
    act_order: bool = False
    static_groups: bool = False
    damp: float = 0.01
    block_size: int = 128
    calib: str | None = None
    nsamples: int | None = None
    seq_len: int = 512
    seed: int = 0
    quantizer: str = "uniform"
    plan: str | None = None
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", _choice(Method, self.method, "--method"))
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise UserError(f"--bits {self.bits!r}: must be an integer from 1 to 8")
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
        if self.quantizer != "uniform" and self.method != Method.RTN:
            raise UserError(f"--quantizer {self.quantizer}: codebook quantizers are applied by --method rtn")
        if self.static_groups and self.group_size is None:
            raise UserError("--static-groups needs --group-size")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["method"] = self.method.value
        return d
