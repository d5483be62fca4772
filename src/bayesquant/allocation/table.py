"""Cost tables, budgets and allocations: the common currency of every bit allocator.

A `CostTable` holds, for G groups (the units that share one bit-width) and B candidate widths,
`cost[g, k]` — the expected loss of group g quantized at `bits[k]` bits — together with each group's size
(weights) and `overhead[g, k]`, the stored bits beyond its codes at that width (scales, zeros, codebooks;
DESIGN §3). Stored bits of group g at width index k: `sizes[g]·bits[k] + overhead[g, k]`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from bayesquant.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)
TOLERANCE = 0.01  # a budget counts as met within this many bits per weight


class BudgetKind(str, Enum):
    NOMINAL = "nominal"  # mean code width
    STORABLE = "storable"  # codes + scales/zeros/codebooks, per weight


@dataclass(frozen=True)
class Budget:
    """A mean number of bits per weight, nominal or storable (always named)."""

    bits: float
    kind: BudgetKind = BudgetKind.NOMINAL

    def __post_init__(self) -> None:
        if not (isinstance(self.bits, int | float) and math.isfinite(self.bits) and self.bits > 0):
            raise UserError(f"--budget {self.bits!r}: must be a positive number of bits per weight")
        try:
            object.__setattr__(self, "kind", BudgetKind(self.kind))
        except ValueError:
            raise UserError(f"budget kind {self.kind!r}: unknown; valid: nominal, storable") from None


@dataclass
class CostTable:
    """cost (G, B), sizes (G,), overhead (G, B), widths `bits` (B,) ascending; `names[g]` labels a group and
    `modules[g]` names the module it belongs to; `index[g]` its position inside the module (row, column or
    block), -1 for a whole layer. `info` (G,) is an optional per-group informativeness (Quantile Inform)."""

    cost: torch.Tensor
    sizes: torch.Tensor
    bits: tuple[int, ...]
    overhead: torch.Tensor | None = None
    modules: list[str] = field(default_factory=list)
    index: torch.Tensor | None = None
    granularity: str = "layer"
    info: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cost = torch.as_tensor(self.cost, dtype=torch.float64)
        self.sizes = torch.as_tensor(self.sizes, dtype=torch.float64)
        if self.cost.dim() != 2:
            raise ValueError(f"cost: expected (groups, widths), got shape {tuple(self.cost.shape)}")
        G, B = self.cost.shape
        if len(self.bits) != B or list(self.bits) != sorted(set(self.bits)):
            raise ValueError(f"bits={self.bits}: need {B} distinct widths in ascending order")
        if any(not 1 <= b <= 16 for b in self.bits):
            raise ValueError(f"bits={self.bits}: widths must lie in 1..16")
        if self.sizes.shape != (G,) or (self.sizes <= 0).any():
            raise ValueError(f"sizes: expected {G} positive group sizes, got shape {tuple(self.sizes.shape)}")
        if not torch.isfinite(self.cost).all():
            raise ValueError("cost: NaN or infinite entries")
        self.overhead = (
            torch.zeros(G, B, dtype=torch.float64)
            if self.overhead is None
            else torch.as_tensor(self.overhead, dtype=torch.float64).expand(G, B).clone()
        )
        if not self.modules:
            self.modules = [f"g{i}" for i in range(G)]
        if self.index is None:
            self.index = torch.full((G,), -1, dtype=torch.long)

    @property
    def n_groups(self) -> int:
        return self.cost.shape[0]

    @property
    def widths(self) -> torch.Tensor:
        return torch.tensor(self.bits, dtype=torch.float64)

    def stored(self) -> torch.Tensor:
        """Stored bits (G, B) of every group at every width."""
        return self.sizes[:, None] * self.widths[None, :] + self.overhead

    def units(self, kind: BudgetKind) -> torch.Tensor:
        """What a budget of `kind` counts (G, B): code bits (nominal) or code + overhead bits (storable)."""
        return self.stored() if kind == BudgetKind.STORABLE else self.sizes[:, None] * self.widths[None, :]

    def total_budget(self, budget: Budget) -> float:
        return budget.bits * float(self.sizes.sum())


@dataclass
class Allocation:
    """Chosen width index per group and what it costs."""

    choice: torch.Tensor  # (G,) long: index into table.bits
    table: CostTable
    allocator: str
    budget: Budget
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bits(self) -> torch.Tensor:
        """(G,) widths in bits."""
        return self.table.widths[self.choice].long()

    def _mean(self, units: torch.Tensor) -> float:
        return float(units.gather(1, self.choice[:, None]).sum() / self.table.sizes.sum())

    @property
    def nominal_bits(self) -> float:
        return self._mean(self.table.units(BudgetKind.NOMINAL))

    @property
    def storable_bits(self) -> float:
        return self._mean(self.table.units(BudgetKind.STORABLE))

    @property
    def spent(self) -> float:
        return self.nominal_bits if self.budget.kind == BudgetKind.NOMINAL else self.storable_bits

    @property
    def objective(self) -> float:
        """Σ_g cost[g, b_g]."""
        return float(self.table.cost.gather(1, self.choice[:, None]).sum())

    def per_module(self) -> dict[str, list[int]]:
        """Module name → the widths of its groups, in group order."""
        out: dict[str, list[int]] = {}
        for name, b in zip(self.table.modules, self.bits.tolist(), strict=True):
            out.setdefault(name, []).append(int(b))
        return out


def allowed_mask(
    table: CostTable,
    min_bits: int | None = None,
    max_bits: int | None = None,
    pinned: dict[str, int] | None = None,
) -> torch.Tensor:
    """(G, B) bool: which widths each group may take. `pinned` maps fnmatch patterns of module names to a
    minimum width (e.g. {"conv1": 8} keeps the first layer at ≥ 8 bits), overriding min_bits and max_bits."""
    import fnmatch

    w = table.widths
    mask = torch.ones(table.n_groups, len(table.bits), dtype=torch.bool)
    if min_bits is not None:
        mask &= (w >= min_bits)[None, :]
    if max_bits is not None:
        mask &= (w <= max_bits)[None, :]
    for pattern, bits in (pinned or {}).items():
        hit = torch.tensor([fnmatch.fnmatchcase(m, pattern) for m in table.modules])
        if not hit.any():
            raise UserError(f"--pin {pattern}={bits}: no module matches {pattern!r}; modules: {table.modules[:4]}…")
        mask[hit] = (w >= bits)[None, :]  # a pin overrides min_bits and max_bits
    empty = ~mask.any(1)
    if empty.any():
        g = int(empty.nonzero()[0])
        raise UserError(
            f"group {table.modules[g]}[{int(table.index[g])}] has no allowed width among {table.bits} "
            f"(min_bits={min_bits}, max_bits={max_bits}, pins={pinned}); widen the limits"
        )
    return mask


def check_budget(alloc: Allocation, total: float) -> None:
    """Warn when the allocation misses its budget by more than TOLERANCE bits per weight."""
    spent, target = alloc.spent, alloc.budget.bits
    if abs(spent - target) > TOLERANCE:
        log.warning(
            "%s: %s budget %.3f bits not met exactly; nearest feasible point %.3f bits",
            alloc.allocator, alloc.budget.kind.value, target, spent,
        )  # fmt: skip
        alloc.extra["budget_missed_by"] = spent - target
