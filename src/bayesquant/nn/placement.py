"""Where a model's tensors live: its device and floating dtype, and moving inputs there (DESIGN §5 rule 7:
device and dtype come from the model; nothing defaults to "cuda")."""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch import nn


def placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device of `module`'s first parameter or buffer and the dtype of its first floating one
    (CPU and the default dtype for a module with neither)."""
    first = next(chain(module.parameters(), module.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    floating = (t for t in chain(module.parameters(), module.buffers()) if t.is_floating_point())
    return device, next(floating, torch.empty(0)).dtype


def to_model(obj: Any, module: nn.Module | None = None, *, device=None, dtype=None) -> Any:
    """`obj` (a tensor, or tuples, lists and dicts of them) on `module`'s device, its floating tensors in the
    module's floating dtype; integer tensors (token ids, labels, masks) keep theirs. A no-op — the same
    objects — where they are already there."""
    if module is not None:
        device, dtype = placement(module)
    if isinstance(obj, torch.Tensor):
        return obj.to(device=device, dtype=dtype if obj.is_floating_point() else None)
    if isinstance(obj, tuple | list):
        return type(obj)(to_model(o, device=device, dtype=dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: to_model(v, device=device, dtype=dtype) for k, v in obj.items()}
    return obj
