"""A Gaussian posterior over the quantizable weights of a model: mean μ and variance σ² per weight.

Every Bayesian method reads its uncertainty from here: BayesQ's precision-weighted distortion uses 1/σ²,
Quantile Inform uses the informativeness |μ|/σ, QBNN starts from (μ, σ).

>>> post = DiagLaplace(model, likelihood="classification").fit(loader).posterior  # doctest: +SKIP
>>> post.summary()[0]["informativeness_mean"]  # doctest: +SKIP
3.7
>>> post.save("lenet.posterior.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bayesquant.errors import UserError
from bayesquant.paths import atomic_file

FORMAT = "bayesquant-posterior"
FORMAT_VERSION = 1


class NotFittedError(RuntimeError):
    """An estimator was used before `fit()`."""


@dataclass
class Posterior:
    """N(μ, diag σ²) over the weight of every quantizable module, keyed by qualified module name.

    mean[name] and var[name] have the shape of that module's weight; `meta` records how it was made
    (method, curvature, prior precision, number of data points, model key).
    """

    mean: dict[str, torch.Tensor]
    var: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.mean) != set(self.var):
            raise ValueError(f"mean and var name different tensors: {sorted(set(self.mean) ^ set(self.var))}")
        for name, mu in self.mean.items():
            var = self.var[name]
            if mu.shape != var.shape:
                raise ValueError(f"{name}: mean {tuple(mu.shape)} and var {tuple(var.shape)} differ in shape")
            if not torch.isfinite(mu).all():
                raise ValueError(f"{name}: the posterior mean has NaN or infinite entries")
            if not (torch.isfinite(var).all() and (var > 0).all()):
                raise ValueError(f"{name}: σ² must be finite and positive everywhere")

    @property
    def names(self) -> list[str]:
        return list(self.mean)

    @property
    def numel(self) -> int:
        return sum(m.numel() for m in self.mean.values())

    def std(self, name: str) -> torch.Tensor:
        return self.var[name].sqrt()

    def precision(self, name: str) -> torch.Tensor:
        return self.var[name].reciprocal()

    def loss_curvature(self, name: str) -> torch.Tensor:
        """h = 1/σ² − λ: the part of a Laplace posterior's precision that comes from the data, i.e. the diagonal
        curvature of the training loss, floored at 10⁻⁶·λ so that it stays positive (float64). A posterior whose
        `meta` has no prior precision (mean-field VI) gives its whole precision."""
        lam = self.meta.get("prior_precision")
        if not isinstance(lam, int | float) or isinstance(lam, bool) or lam <= 0:
            return self.precision(name)
        return (self.var[name].double().reciprocal() - lam).clamp_min(1e-6 * lam)  # float64: 1/σ² ≈ λ cancels

    def informativeness(self, name: str) -> torch.Tensor:
        """|μ|/σ (paper (c) §4.2): how many standard deviations a weight sits away from zero."""
        return self.mean[name].abs() / self.std(name)

    def sample(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One draw w = μ + σ·ε for every tensor."""
        out = {}
        for name, mu in self.mean.items():
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
            out[name] = mu + self.std(name) * eps
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Per-tensor statistics of σ and of the informativeness |μ|/σ, in module order."""
        rows = []
        for name, mu in self.mean.items():
            sigma = self.std(name).double().flatten()
            inform = self.informativeness(name).double().flatten()
            q = torch.quantile(inform[: 1 << 24], torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
            rows.append(
                {
                    "name": name,
                    "shape": list(mu.shape),
                    "numel": mu.numel(),
                    "sigma_mean": float(sigma.mean()),
                    "sigma_median": float(sigma.median()),
                    "abs_mu_mean": float(mu.double().abs().mean()),
                    "informativeness_mean": float(inform.mean()),
                    "informativeness_p10": float(q[0]),
                    "informativeness_median": float(q[1]),
                    "informativeness_p90": float(q[2]),
                }
            )
        return rows

    def check_model(self, modules: dict[str, nn.Module], argument: str = "--posterior") -> None:
        """Raise a UserError unless the posterior covers exactly `modules` (name → module) with matching shapes."""
        missing = [n for n in modules if n not in self.mean]
        extra = [n for n in self.mean if n not in modules]
        made_for = self.meta.get("model", "another model")
        if missing or extra:
            detail = f"missing {missing[:3]}" if missing else f"unknown modules {extra[:3]}"
            raise UserError(
                f"{argument}: this posterior (made for {made_for}) does not match the model: {detail}; "
                "estimate one for this model with `bayesquant posterior --model KEY ...`"
            )
        for name, module in modules.items():
            if tuple(module.weight.shape) != tuple(self.mean[name].shape):
                raise UserError(
                    f"{argument}: {name} has weight shape {tuple(module.weight.shape)} but the posterior "
                    f"(made for {made_for}) has {tuple(self.mean[name].shape)}; estimate one for this model"
                )

    @contextmanager
    def weights_in(self, modules: dict[str, nn.Module], weights: dict[str, torch.Tensor]) -> Iterator[None]:
        """Temporarily put `weights` (e.g. a `sample()`) into `modules`; the originals come back afterwards."""
        saved = {n: m.weight.detach().clone() for n, m in modules.items()}
        try:
            with torch.no_grad():
                for n, m in modules.items():
                    m.weight.copy_(weights[n].to(m.weight.dtype))
            yield
        finally:
            with torch.no_grad():
                for n, m in modules.items():
                    m.weight.copy_(saved[n])

    # ---------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Write safetensors (`NAME.mean`, `NAME.var` in float32) with the metadata as JSON; atomic."""
        from safetensors.torch import save

        path = Path(path)
        tensors = {}
        for name in self.mean:
            tensors[f"{name}.mean"] = self.mean[name].detach().float().contiguous().cpu()
            tensors[f"{name}.var"] = self.var[name].detach().float().contiguous().cpu()
        header = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "names": json.dumps(self.names),
            "meta": json.dumps(self.meta, default=str),
        }
        with atomic_file(path) as fh:
            fh.write(save(tensors, metadata=header))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Posterior:
        """Read a file written by `save`; a truncated or foreign file gives a UserError naming it."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise UserError(f"--posterior {path}: no such file; make one with `bayesquant posterior ... --out FILE`")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = fh.metadata() or {}
                if header.get("format") != FORMAT:
                    raise UserError(f"--posterior {path}: not a bayesquant posterior file (no '{FORMAT}' header)")
                if int(header.get("format_version", -1)) > FORMAT_VERSION:
                    raise UserError(f"--posterior {path}: format version {header['format_version']} is newer "
                                    f"than this bayesquant reads ({FORMAT_VERSION}); upgrade bayesquant")  # fmt: skip
                names = json.loads(header["names"])
                mean = {n: fh.get_tensor(f"{n}.mean") for n in names}
                var = {n: fh.get_tensor(f"{n}.var") for n in names}
                meta = json.loads(header.get("meta", "{}"))
        except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError) as err:
            if isinstance(err, UserError):
                raise
            raise UserError(f"--posterior {path}: unreadable or truncated ({err}); re-create it") from None
        try:
            return cls(mean, var, meta)
        except ValueError as err:
            raise UserError(f"--posterior {path}: {err}; re-create it") from None


def informativeness_table(post: Posterior) -> str:
    """The per-layer informativeness table as markdown."""
    lines = [
        "| module | shape | σ median | mean |μ| | |μ|/σ mean | p10 | median | p90 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in post.summary():
        shape = "×".join(map(str, r["shape"]))
        lines.append(
            f"| {r['name']} | {shape} | {r['sigma_median']:.3g} | {r['abs_mu_mean']:.3g} "
            f"| {r['informativeness_mean']:.3g} | {r['informativeness_p10']:.3g} "
            f"| {r['informativeness_median']:.3g} | {r['informativeness_p90']:.3g} |"
        )
    return "\n".join(lines)


def check_finite_weights(modules: dict[str, nn.Module]) -> None:
    """Raise a UserError naming the first module whose weight has NaN or infinite entries."""
    if not modules:
        raise UserError("the model has no quantizable layers (Linear/Conv2d): there is no weight posterior to fit")
    for name, m in modules.items():
        if not torch.isfinite(m.weight).all():
            bad = int((~torch.isfinite(m.weight)).sum())
            raise UserError(f"{name}: {bad} NaN or infinite weights; a posterior needs a model with finite weights")
