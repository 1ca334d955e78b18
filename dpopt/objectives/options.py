"""The options an objective declares, and their checks.

An objective lists what it accepts in ``OPTIONS`` (name -> :class:`Option`), as a cost
does, so a misspelt name or a value of the wrong kind is one line before any model loads,
never an option quietly left out. The checks need the class alone, not a model or data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import UserError


@dataclass(frozen=True)
class Option:
    """One option: its type (int, float or str), default, help, and the values it accepts.

    ``minimum``: the least number accepted; ``choices``: the strings accepted; ``flag``: the
    command-line flag that sets it, where it is not ``--NAME`` (``topk`` is ``--kl-topk``).
    A default of None means "decided later" (kl's top-k from the vocabulary), so None is
    accepted then.
    """

    type: type
    default: Any
    help: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    flag: str = ""

    def label(self, name: str) -> str:
        plain = "--" + name.replace("_", "-")
        return plain if self.flag in ("", plain) else f"{self.flag} (option {name})"

    def check(self, name: str, value: Any) -> Any:
        """``value`` if this option accepts it, else a UserError naming the option and the value."""
        if value is None and self.default is None:
            return None
        what = self.label(name)
        if self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, self.type)
        if ok and self.choices and value not in self.choices:
            raise UserError(f"{what} must be one of {', '.join(self.choices)}, got {value!r}")
        if ok and (self.minimum is None or value >= self.minimum):
            return float(value) if self.type is float else value
        if self.type is int and self.minimum == 1:
            need = "a positive integer"
        else:
            need = {int: "an integer", float: "a number"}.get(self.type, f"a {self.type.__name__}")
            need += f" of at least {self.minimum:g}" if self.minimum is not None else ""
        raise UserError(f"{what} must be {need}, got {value!r}")


def check_options(declared: Mapping[str, Option], options: Mapping[str, Any], spec: str) -> dict[str, Any]:
    """``options`` checked against ``declared``: an undeclared name or a bad value is one line."""
    for name in options:
        if name not in declared:
            raise UserError(f"objective {spec!r} has no option {name!r} ({takes(declared)})")
    return {name: declared[name].check(name, value) for name, value in options.items()}


def takes(declared: Mapping[str, Option]) -> str:
    return f"its options: {', '.join(declared)}" if declared else "it takes no options"


def with_defaults(declared: Mapping[str, Option], options: Mapping[str, Any], spec: str) -> dict[str, Any]:
    """Every declared option's value: the checked ``options`` over the defaults."""
    return {**{n: o.default for n, o in declared.items()}, **check_options(declared, options, spec)}
