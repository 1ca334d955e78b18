"""Small name -> object registries filled by decorators.

Searchers, objectives, model families and data sets are all looked up by name, so adding
one is a new module plus a decorator. A name of the form ``package.module:Name`` is
imported on demand, which is how users plug in their own classes.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            for name in names:
                if name in self._items and self._items[name] is not obj:
                    raise ValueError(f"{self.kind} {name!r} registered twice")
                self._items[name] = obj
            return obj

        return deco

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return load_object(name, self.kind)
        raise UserError(
            f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            + (" (or give package.module:Name)" if self.kind in ("objective", "searcher") else "")
        )


def load_object(spec: str, kind: str) -> Any:
    """Import ``package.module:Name``; a user mistake here is a UserError, not a traceback."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"{kind} {spec!r} is not of the form package.module:Name")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the user's module failing at import
        raise UserError(f"cannot import module {module_name!r} for {kind} {spec!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"module {module_name!r} has no {attr!r} (for {kind} {spec!r})") from None
