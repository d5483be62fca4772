"""A plan: the bit-width of every quantized module (or of each of its groups), as plain JSON.

    {"format": "bayesquant-plan", "format_version": 1, "allocator": "knapsack", "granularity": "layer",
     "budget": {"bits": 3.2, "kind": "nominal"}, "nominal_bits": 3.198, "storable_bits_estimate": 3.32,
     "quantizer": "uniform", "group_size": null, "metric": "informativeness",
     "modules": {"features.0": [8], "classifier.1": [3], ...}}

`modules[name]` lists the widths of the module's groups in order: one entry for layer granularity, one per
output row (channel), input column (column) or block of `group_size` weights of a row (block). A plan can be
edited by hand and applied with `bayesquant quantize --plan PLAN.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayesquant.allocation.table import Allocation
from bayesquant.errors import UserError
from bayesquant.paths import atomic_file

FORMAT = "bayesquant-plan"
FORMAT_VERSION = 1


@dataclass
class Plan:
    modules: dict[str, list[int]]
    granularity: str = "layer"
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_allocation(cls, alloc: Allocation) -> Plan:
        t = alloc.table
        meta = {
            "allocator": alloc.allocator,
            "budget": {"bits": alloc.budget.bits, "kind": alloc.budget.kind.value},
            "nominal_bits": alloc.nominal_bits,
            "storable_bits_estimate": alloc.storable_bits,
            "objective": alloc.objective,
            "metric": t.meta.get("metric"),
            "quantizer": t.meta.get("quantizer"),
            "group_size": t.meta.get("group_size"),
        }
        return cls(alloc.per_module(), t.granularity, meta)

    def layer_bits(self, name: str) -> int:
        """The width of a module of a layer-granularity plan; a clear error otherwise."""
        if name not in self.modules:
            raise UserError(f"--plan: module {name!r} is not in the plan; plan modules: {list(self.modules)[:4]}…")
        widths = self.modules[name]
        if self.granularity != "layer" or len(widths) != 1:
            raise UserError(
                f"--plan: {self.granularity} plans give each group of a module its own width; the rtn/gptq solvers "
                "apply one width per module (layer plans). Re-run `bayesquant allocate --granularity layer`."
            )
        return widths[0]

    def check_modules(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self.modules]
        extra = [n for n in self.modules if n not in names]
        if missing or extra:
            detail = f"missing {missing[:3]}" if missing else f"unknown modules {extra[:3]}"
            raise UserError(f"--plan: does not match the model ({detail}); allocate for this model's posterior")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "granularity": self.granularity,
                **self.meta, "modules": self.modules}  # fmt: skip

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_file(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1)
            fh.write("\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(
                f"--plan {path}: no such file; make one with `bayesquant allocate ... --out PLAN.json`"
            ) from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"--plan {path}: not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f'--plan {path}: not a bayesquant plan (no "format": "{FORMAT}")')
        modules = data.get("modules")
        ok = isinstance(modules, dict) and all(
            isinstance(v, list) and v and all(isinstance(b, int) and 1 <= b <= 8 for b in v) for v in modules.values()
        )
        if not ok:
            raise UserError(f'--plan {path}: "modules" must map module names to lists of widths in 1..8')
        meta = {k: v for k, v in data.items() if k not in ("format", "format_version", "granularity", "modules")}
        return cls(modules, data.get("granularity", "layer"), meta)
