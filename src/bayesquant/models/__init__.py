"""The model zoo and the network definitions."""

from bayesquant.models.family import FAMILIES, Family
from bayesquant.models.zoo import ZOO, LoadedModel, Task, build, list_models, load_model, trained_keys

__all__ = [
    "FAMILIES",
    "ZOO",
    "Family",
    "LoadedModel",
    "Task",
    "build",
    "list_models",
    "load_model",
    "trained_keys",
]
