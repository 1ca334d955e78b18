"""Objectives score a masked model; ``build_objective`` turns an ``--objective`` string into one.

Forms: a registered name (``ppl``, ``kl``, ``acc``), a weighted composite
(``ppl:0.5,acc:0.5``), or a user's class (``mypkg.mod:MyObjective``).

Options. Each objective declares the options it takes (``OPTIONS``, :mod:`.options`). A run
hands its options to every objective it builds (a composite's parts, ``eval``'s list,
``compare``'s held-out objectives), so the rule is:

- :func:`validate_objective_spec` checks a whole run before any model loads: each option
  must be taken by at least one of the run's objectives and pass its check there;
- :func:`build_objective` builds one spec: each objective gets the options it declares; an
  option it does not take is an error unless some registered objective takes it (the
  command line's data options, the business of the run-wide check above).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import UserError
from . import acc, kl, ppl  # noqa: F401  (fill the registry)
from .base import OBJECTIVES, Batch, Objective, ObjectiveBase, check_objective, declared, register_objective
from .composite import Composite
from .options import Option, check_options, takes
from ..data import DEFAULT_TEXT, MCData, TextData, load_data

DEFAULT_TASKS = "mmlu"


def _is_weight(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def parse_spec(spec: str) -> list[tuple[str, float | None]]:
    """``(name, weight)`` of each objective ``spec`` names: one with weight None, or a composite's parts."""
    spec = (spec or "").strip()
    if not spec:
        raise UserError("--objective is empty")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not (len(parts) > 1 or (":" in spec and _is_weight(spec.rpartition(":")[2]))):
        return [(spec, None)]
    out = []
    for part in parts:
        name, _, weight = part.rpartition(":")
        if not name or not _is_weight(weight):
            raise UserError(f"composite objective part {part!r} must be NAME:WEIGHT, e.g. ppl:0.5")
        if not float(weight) > 0 or float(weight) == float("inf"):
            raise UserError(f"composite objective weight in {part!r} must be a positive number "
                            "(each term is already oriented so that lower is better)")
        out.append((name.strip(), float(weight)))
    return out


def objective_class(name: str) -> type:
    cls = OBJECTIVES.get(name)
    if not callable(cls):
        raise UserError(f"objective {name!r} is not a class")
    return cls


def run_option_names() -> set[str]:
    """Options some registered objective takes: a run may hand them to objectives that do not."""
    return {key for _, cls in OBJECTIVES.items() for key in declared(cls, "OPTIONS")}


def validate_objective_spec(specs: str | Sequence[str], options: Mapping[str, Any]) -> None:
    """Check a run's objectives and their options without a model or data; a mistake is one UserError line.

    ``specs``: the ``--objective`` spec, or every spec one run builds (``eval``'s list, the
    held-out objectives of ``compare``). ``options``: those the user set (None: not set).
    Each must be taken by at least one of the run's objectives, and pass the check of each
    that takes it.
    """
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise UserError("--objective is empty")
    classes = {name: declared(objective_class(name), "OPTIONS") for spec in specs for name, _ in parse_spec(spec)}
    given = {k: v for k, v in options.items() if v is not None}
    for key, value in given.items():  # a bad value first: the more precise mistake
        for name, opts in classes.items():
            if key in opts:
                opts[key].check(key, value)
    for key in given:
        if any(key in opts for opts in classes.values()):
            continue
        if len(classes) == 1:
            ((name, opts),) = classes.items()
            raise UserError(f"objective {name!r} has no option {key!r} ({takes(opts)})")
        every = dict.fromkeys(k for opts in classes.values() for k in opts)
        raise UserError(f"none of the objectives {', '.join(classes)} has option {key!r} "
                        f"(their options: {', '.join(every) or 'none'})")


def uses_tasks(spec: str) -> tuple[bool, bool]:
    """Whether ``spec`` reads text data, multiple-choice data, or both (for the fingerprint)."""
    kinds = {declared(objective_class(name), "data_kind") for name, _ in parse_spec(spec)}
    return "text" in kinds, "mc" in kinds


def options_for(spec: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options some objective of ``spec`` takes: one run's options, checked together by
    :func:`validate_objective_spec`, handed to each of its objectives (``eval 'ppl;acc'``)."""
    taken = {key for name, _ in parse_spec(spec) for key in declared(objective_class(name), "OPTIONS")}
    return {k: v for k, v in options.items() if k in taken and v is not None}


def build_objective(spec: str, data: str | None = None, tasks: str | None = None, split: str = "calib",
                    seed: int = 0, **options):
    """Return ``(objective, data)`` ready for ``prepare``; each objective gets the ``options`` it declares."""
    options = {k: v for k, v in options.items() if v is not None}
    parts = parse_spec(spec)
    if parts[0][1] is None:
        return _build_one(parts[0][0], data, tasks, split, seed, options)
    triples = [(*_build_one(name, data, tasks, split, seed, options), weight) for name, weight in parts]
    return Composite([(obj, weight, obj_data) for obj, obj_data, weight in triples]), None


def _build_one(name: str, data, tasks, split: str, seed: int, options: dict[str, Any]):
    cls = objective_class(name)
    accepted = declared(cls, "OPTIONS")
    foreign = [k for k in options if k not in accepted and k not in run_option_names()]
    if foreign:
        raise UserError(f"objective {name!r} has no option {foreign[0]!r} ({takes(accepted)})")
    own = check_options(accepted, {k: v for k, v in options.items() if k in accepted}, name)
    try:
        obj = cls(**own)
    except TypeError as exc:
        if issubclass(cls, ObjectiveBase):
            raise
        raise UserError(f"cannot construct objective {name!r}: {exc}") from None
    obj = check_objective(obj, name, own)
    if not obj.wants_data:
        return obj, None
    source = (tasks or DEFAULT_TASKS) if obj.data_kind == "mc" else (data or DEFAULT_TEXT)
    return obj, load_data(source, split=split, seed=seed)


__all__ = ["OBJECTIVES", "Batch", "Objective", "ObjectiveBase", "Option", "register_objective", "build_objective",
           "validate_objective_spec", "options_for", "parse_spec", "Composite", "load_data", "TextData", "MCData"]
