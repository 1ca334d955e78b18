"""Small name -> object registries filled by decorators.

Searchers, objectives, model families and data sets are all looked up by name, so adding
one is a new module plus a decorator. A name of the form ``package.module:Name`` is
imported on demand, which is how users plug in their own classes. A registered prefix
(``ng:NAME``, ``optuna:NAME``) hands NAME to a resolver first, so a whole foreign registry
(nevergrad's optimizers, Optuna's samplers) is reachable without listing it here.
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
        self._prefixes: dict[str, tuple[Callable[[str], T], str]] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            for name in names:
                if name in self._items and self._items[name] is not obj:
                    raise ValueError(f"{self.kind} {name!r} registered twice")
                self._items[name] = obj
            return obj

        return deco

    def register_prefix(self, prefix: str, resolver: Callable[[str], T], help: str = "") -> None:
        """``get("PREFIX:NAME")`` returns ``resolver(NAME)``; the resolver raises UserError for an unknown NAME."""
        if prefix in self._prefixes and self._prefixes[prefix][0] is not resolver:
            raise ValueError(f"{self.kind} prefix {prefix!r} registered twice")
        self._prefixes[prefix] = (resolver, help)

    def prefixes(self) -> list[tuple[str, str]]:
        """(prefix, one-line help) for every registered prefix, sorted."""
        return sorted((p, h) for p, (_, h) in self._prefixes.items())

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
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self._prefixes:
            if not rest:
                raise UserError(f"{self.kind} {name!r} names no {prefix} entry; give {prefix}:NAME")
            return self._prefixes[prefix][0](rest)
        if sep:
            return load_object(name, self.kind)
        raise UserError(
            f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            + "".join(f", {p}:NAME" for p, _ in self.prefixes())
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
