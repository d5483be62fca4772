"""bayesquant: uncertainty-guided quantization of neural networks.

Importing the package does no work: submodules are imported on first use.

>>> import bayesquant
>>> bayesquant.__version__
'0.1.0'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "UserError": "bayesquant.errors",
    "load_model": "bayesquant.models",
    "list_models": "bayesquant.models",
    "load_dataset": "bayesquant.data",
    "evaluate": "bayesquant.eval",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bayesquant' has no attribute {name!r}")
