"""The layer-by-layer driver: capture the inputs of the first block, quantize each block's modules in
order (true-sequential groups), then feed the quantized block's outputs to the next block.

Peak memory is the model plus one block's calibration inputs and outputs. Quantizable modules outside
the block sequence (a classifier head, a CNN stem) are handled last, with full forward passes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from bayesquant.models.family import Family
from bayesquant.nn.qweight import QuantizedWeight
from bayesquant.solvers.hessian import HessianAccumulator

log = logging.getLogger(__name__)

Inputs = tuple[tuple, dict[str, Any]]  # (args, kwargs) of one forward call
# solve(name, module, H or None) → the quantized weight (its dequantized value replaces module.weight)
Solver = Callable[[str, nn.Module, torch.Tensor | None], QuantizedWeight]


class _Stop(Exception):
    """Raised by a hook to end a forward pass early once everything needed has been seen."""


@dataclass
class ModuleReport:
    name: str
    shape: tuple[int, ...]
    nominal_bits: float
    seconds: float


@dataclass
class SequentialReport:
    modules: list[ModuleReport] = field(default_factory=list)
    qweights: dict[str, QuantizedWeight] = field(default_factory=dict)
    seconds: float = 0.0


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


@torch.no_grad()
def capture_block_inputs(model: nn.Module, block: nn.Module, batches: list[Inputs]) -> list[Inputs]:
    """The (args, kwargs) with which `block` is called for each calibration batch."""
    captured: list[Inputs] = []

    def pre_hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args, kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for args, kwargs in batches:
            with contextlib.suppress(_Stop):
                model(*args, **kwargs)
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def _collect_hessians(runner: Callable[[int, Inputs], Any], inputs: list[Inputs], modules: dict[str, nn.Module]):
    """Run `runner` on every input with hooks accumulating each module's Hessian; stop each pass early
    once every module of the group has seen its input."""
    accs = {name: HessianAccumulator(m) for name, m in modules.items()}
    seen: set[str] = set()
    last: dict[str, Any] = {}  # the input tensor and accumulator most recently added in this pass

    def make_hook(name: str):
        def hook(m: nn.Module, args: tuple, _out: Any) -> None:
            x = args[0]
            same = last.get("x") is x and type(m) is type(last["acc"].layer) and m.weight.shape[1:] == last["w"]
            if same and not isinstance(m, nn.Conv2d):
                # q/k/v (or gate/up) see the very same tensor: their Hessians are equal, compute it once
                accs[name].H, accs[name].n = last["acc"].H, last["acc"].n
            else:
                accs[name].add_batch(x)
                last.update(x=x, acc=accs[name], w=m.weight.shape[1:])
            seen.add(name)
            if len(seen) == len(accs):
                raise _Stop

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    try:
        for j, inp in enumerate(inputs):
            seen.clear()
            last.clear()
            with contextlib.suppress(_Stop):
                runner(j, inp)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, a in accs.items() if a.n == 0]
    if missing:
        raise RuntimeError(f"modules never called during calibration: {missing}")
    return {n: a.H for n, a in accs.items()}


def _groups(block: nn.Module, prefix: str, family: Family, quantizable: dict[str, nn.Module]) -> list[list[str]]:
    """True-sequential groups of qualified names inside `block` (family order, else one module per group)."""
    inside = [n for n in quantizable if n.startswith(prefix)]
    if family.sequential:
        groups = [[prefix + rel for rel in grp if prefix + rel in quantizable] for grp in family.sequential]
        listed = {n for grp in groups for n in grp}
        groups += [[n] for n in inside if n not in listed]
        return [g for g in groups if g]
    return [[n] for n in inside]


def _clone(out: Any) -> Any:
    """A copy of a recorded output, so an in-place op downstream (e.g. ReLU(inplace=True)) cannot change it."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_clone(o) for o in out)
    return out


class FrozenOutputs:
    """Replays the outputs of a block's finished sub-modules during later calibration passes.

    A sub-module of the block (e.g. Llama's `self_attn`, or its `q_proj`, or `mlp.gate_proj`) is finished once
    its own quantizable modules and every quantizable module registered before it are quantized: its input and
    weights no longer change, so its output for calibration batch j is fixed. It is recorded at the next pass
    and replayed (as a copy) afterwards, which saves recomputing the attention and the finished projections in
    the passes that follow. Sub-modules without quantizable modules inside (norms, activations) are recomputed.
    """

    def __init__(self, block: nn.Module, prefix: str, quantizable: dict[str, nn.Module]) -> None:
        self.order = [n for n in quantizable if n.startswith(prefix)]
        self.modules: list[tuple[nn.Module, int]] = []  # (sub-module, position of its last quantizable module)
        for rel, module in block.named_modules():
            if not rel:
                continue  # the block itself
            full = f"{prefix}{rel}"
            inside = [k for k, n in enumerate(self.order) if n == full or n.startswith(f"{full}.")]
            if inside:
                self.modules.append((module, max(inside)))
        self.index = 0  # the calibration batch being run
        self.outputs: dict[nn.Module, dict[int, Any]] = {}

    def update(self, done: set[str]) -> None:
        """Start recording every sub-module that became finished. Called after each pass: a module recording
        since the previous call has now recorded every batch, so its descendants' records are no longer read
        (the module replays as a whole) and are dropped to save memory."""
        for module in list(self.outputs):
            for sub in module.modules():
                if sub is not module and sub in self.outputs:
                    self.outputs[sub].clear()
        for module, last in self.modules:
            if module not in self.outputs and all(n in done for n in self.order[: last + 1]):
                self.outputs[module] = {}
                module.forward = self._replaying(module, module.forward)  # instance attribute: shadows the method

    def _replaying(self, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        store = self.outputs[module]

        def replay(*args: Any, **kwargs: Any) -> Any:
            if self.index not in store:
                out = forward(*args, **kwargs)
                store[self.index] = _clone(out)  # kept apart from what the caller may modify in place
                return out
            return _clone(store[self.index])

        return replay

    def close(self) -> None:
        for module in self.outputs:
            del module.forward  # back to the class's method
        self.outputs.clear()


def quantize_sequential(
    model: nn.Module,
    family: Family,
    batches: list[Inputs],
    solve: Solver,
    *,
    needs_hessian: bool = True,
    desc: str = "quantize",
) -> SequentialReport:
    """Quantize every quantizable module of `model` in place (its weight becomes the dequantized weight);
    returns the quantized weights for packing."""
    start = time.perf_counter()
    report = SequentialReport()
    quantizable = family.quantizable_modules(model)
    if not quantizable:
        raise ValueError("the model has no quantizable modules")

    def apply(names: list[str], hessians: dict[str, torch.Tensor] | None) -> None:
        for name in names:
            module = quantizable[name]
            t = time.perf_counter()
            qw = solve(name, module, None if hessians is None else hessians[name]).with_stored_grids()
            with torch.no_grad():
                module.weight.copy_(qw.dequantize().reshape(module.weight.shape).to(module.weight.dtype))
            report.qweights[name] = qw
            report.modules.append(
                ModuleReport(name, tuple(module.weight.shape), qw.nominal_bits, time.perf_counter() - t)
            )

    def run_groups(
        groups: list[list[str]], runner: Callable[[int, Inputs], Any], inputs: list[Inputs], frozen=None
    ) -> None:
        for names in groups:
            mods = {n: quantizable[n] for n in names}
            apply(names, _collect_hessians(runner, inputs, mods))
            if frozen is not None:
                frozen.update(set(report.qweights))

    if not needs_hessian:  # nothing to calibrate: quantize every module from its weights alone
        apply(list(quantizable), None)
        report.seconds = time.perf_counter() - start
        return report
    blocks = family.block_list(model) if family.blocks is not None else []
    if blocks:
        with torch.no_grad():
            inputs = capture_block_inputs(model, blocks[0], batches)
        for i, block in enumerate(tqdm(blocks, desc=desc, unit="block", mininterval=1.0)):
            prefix = family.block_prefix(i)
            frozen = FrozenOutputs(block, prefix, quantizable)

            def runner(j: int, inp: Inputs, block: nn.Module = block, frozen: FrozenOutputs = frozen) -> Any:
                frozen.index = j
                return block(*inp[0], **inp[1])

            try:
                run_groups(_groups(block, prefix, family, quantizable), runner, inputs, frozen)
                if i + 1 < len(blocks):
                    with torch.no_grad():
                        inputs = [((_first(runner(j, inp)), *inp[0][1:]), inp[1]) for j, inp in enumerate(inputs)]
            finally:
                frozen.close()
        del inputs
    rest = [n for n in quantizable if n not in report.qweights]
    if rest:  # modules outside the blocks (or a model without blocks), in forward order, one at a time
        order = {n: i for i, n in enumerate(quantizable)}
        rest.sort(key=order.__getitem__)

        def full(_j: int, inp: Inputs) -> Any:
            return model(*inp[0], **inp[1])

        label = f"{desc} (outside blocks)" if blocks else desc
        for name in tqdm(rest, desc=label, unit="module", mininterval=1.0, disable=len(rest) < 4):
            run_groups([[name]], full, batches)
    report.seconds = time.perf_counter() - start
    return report
