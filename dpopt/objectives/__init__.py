"""Objectives score a masked model; ``build_objective`` turns an ``--objective`` string into one.

Forms: a registered name (``ppl``, ``kl``, ``acc``), a weighted composite
(``ppl:0.5,acc:0.5``), or a user's class (``mypkg.mod:MyObjective``).
"""
from __future__ import annotations

from ..errors import UserError
from . import acc, kl, ppl  # noqa: F401  (fill the registry)
from .base import OBJECTIVES, Batch, Objective, check_objective, register_objective
from .composite import Composite
from ..data import DEFAULT_TEXT, MCData, TextData, load_data

DEFAULT_TASKS = "mmlu"


def _is_weight(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _needs_mc(cls) -> bool:
    return getattr(cls, "data_kind", "text") == "mc"


def _parts(spec: str) -> list[str]:
    parts = [p.strip() for p in (spec or "").split(",") if p.strip()]
    if len(parts) > 1 or (":" in spec and _is_weight(spec.rpartition(":")[2])):
        return [p.rpartition(":")[0] for p in parts]
    return [spec.strip()]


def uses_tasks(spec: str) -> tuple[bool, bool]:
    """Whether ``spec`` reads text data, multiple-choice data, or both (for the fingerprint)."""
    kinds = {"mc" if _needs_mc(OBJECTIVES.get(name)) else "text" for name in _parts(spec)}
    return "text" in kinds, "mc" in kinds


def check_objective_spec(spec: str, options: dict | None = None) -> None:
    """Refuse a malformed ``--objective`` before any model loads (names, weights, user classes)."""
    spec = (spec or "").strip()
    if not spec:
        raise UserError("--objective is empty")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) > 1 or (":" in spec and _is_weight(spec.rpartition(":")[2])):
        for part in parts:
            name, _, weight = part.rpartition(":")
            if not name or not _is_weight(weight):
                raise UserError(f"composite objective part {part!r} must be NAME:WEIGHT, e.g. ppl:0.5")
            if not float(weight) > 0 or float(weight) == float("inf"):
                raise UserError(f"composite objective weight in {part!r} must be a positive number "
                                "(each term is already oriented so that lower is better)")
            OBJECTIVES.get(name)
        return
    OBJECTIVES.get(spec)


def build_objective(spec: str, data: str | None = None, tasks: str | None = None, split: str = "calib",
                    seed: int = 0, **options):
    """Return ``(objective, data)`` ready for ``prepare``; ``options`` go to the constructors."""
    spec = (spec or "").strip()
    if not spec:
        raise UserError("--objective is empty")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) > 1 or (":" in spec and _is_weight(spec.rpartition(":")[2])):
        triples = []
        for part in parts:
            name, _, weight = part.rpartition(":")
            if not name or not _is_weight(weight):
                raise UserError(f"composite objective part {part!r} must be NAME:WEIGHT, e.g. ppl:0.5")
            if not float(weight) > 0 or float(weight) == float("inf"):
                raise UserError(f"composite objective weight in {part!r} must be a positive number "
                                "(each term is already oriented so that lower is better)")
            obj, obj_data = build_objective(name, data, tasks, split, seed, **options)
            triples.append((obj, float(weight), obj_data))
        return Composite(triples), None
    cls = OBJECTIVES.get(spec)
    if not callable(cls):
        raise UserError(f"objective {spec!r} is not a class")
    try:
        obj = cls(**options)
    except TypeError:
        try:
            obj = cls()
        except Exception as exc:
            raise UserError(f"cannot construct objective {spec!r}: {exc}") from None
    obj = check_objective(obj, spec)
    source = (tasks or DEFAULT_TASKS) if _needs_mc(cls) else (data or DEFAULT_TEXT)
    if getattr(obj, "wants_data", True) is False:
        return obj, None
    return obj, load_data(source, split=split, seed=seed)


__all__ = ["OBJECTIVES", "Batch", "Objective", "register_objective", "build_objective", "Composite",
           "load_data", "TextData", "MCData"]
