"""Name → implementation registries whose errors list the valid names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bayesquant.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to entries; an unknown name raises a `UserError` listing the valid ones."""

    def __init__(self, what: str, argument: str) -> None:
        self.what = what  # e.g. "model"
        self.argument = argument  # e.g. "--model"
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        return lambda entry: self.register(name, entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries))
            raise UserError(f"{self.argument} {name!r}: unknown {self.what}; valid: {valid}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def names(self) -> list[str]:
        return list(self._entries)
