"""Costs: what a multi-objective search minimises beside the objective (``--minimize params``).

A cost depends on the mask alone, never on calibration data, so it is computed once per
mask and cached here, apart from the objective's memo (which is keyed by fidelity too).
``params`` is counted exactly from the units' weights; ``latency`` (:mod:`dpopt.costs.latency`)
is measured on the device and carries its noise. A cost is built from the loaded model and
the unit space by its registry entry: ``COSTS.get(name)(lm, space, **options)``.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from ..errors import UserError
from ..genome import LayerMask, UnitSpace
from ..registry import Registry


@runtime_checkable
class Cost(Protocol):
    """A per-mask quantity to minimise. ``values`` may be slow (a measurement) but is cached.

    ``name``: the study's metric name (``params``, ``latency``); ``unit``: how to print it.
    ``settings()``: what decides a value, hashed into the study's fingerprint.
    ``seed(values)``: values already recorded for masks (a resumed study), not re-measured.
    ``noise()``: measurement noise to report (None for an exact count).
    ``OPTIONS``: the ``--cost-option`` names its factory takes.
    """

    name: str
    unit: str
    OPTIONS: tuple[str, ...]

    def values(self, masks: Sequence[LayerMask]) -> list[float]: ...

    def settings(self) -> dict[str, Any]: ...

    def seed(self, values: dict[bytes, float]) -> None: ...

    def noise(self) -> dict[str, Any] | None: ...


COSTS: Registry[Callable[..., Cost]] = Registry("cost")
register_cost = COSTS.register


class CachedCost:
    """The per-mask cache every cost shares; subclasses supply ``_compute(masks)``."""

    name = ""
    unit = ""
    OPTIONS: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.cache: dict[bytes, float] = {}
        self.n_computed = 0

    def values(self, masks: Sequence[LayerMask]) -> list[float]:
        todo = [m for m in dict.fromkeys(masks) if m.key() not in self.cache]
        if todo:
            for m, v in zip(todo, self._compute(todo)):
                self.cache[m.key()] = float(v)
            self.n_computed += len(todo)
        return [self.cache[m.key()] for m in masks]

    def seed(self, values: dict[bytes, float]) -> None:
        for key, v in values.items():
            self.cache.setdefault(key, float(v))

    def settings(self) -> dict[str, Any]:
        return {}

    def noise(self) -> dict[str, Any] | None:
        return None

    def _compute(self, masks: Sequence[LayerMask]) -> list[float]:
        raise NotImplementedError


def unit_params(lm, space: UnitSpace) -> list[int]:
    """Parameters each unit of ``space`` owns (a tied unit: its whole block)."""
    blocks = [sum(p.numel() for p in b.parameters()) for b in lm.masked.blocks]
    if all(kinds is None for _, kinds in space.units):
        return [blocks[b] for b, _ in space.units]
    from ..models.units import unit_param_counts

    sub = unit_param_counts(lm.masked)
    return [blocks[b] if kinds is None else sum(sub[f"{k}.{b}"] for k in kinds) for b, kinds in space.units]


def model_params(lm) -> int:
    """Every parameter of the dense model, counting tied embeddings once."""
    return sum(p.numel() for p in lm.model.parameters())


@register_cost("params")
class ParamsCost(CachedCost):
    """Parameters the pruned model keeps, in millions (a removed sub-layer's weights count as gone)."""

    name = "params"
    unit = "M params"

    def __init__(self, lm, space: UnitSpace):
        super().__init__()
        self.per_unit = [p / 1e6 for p in unit_params(lm, space)]
        self.total = model_params(lm) / 1e6

    def _compute(self, masks):
        return [self.total - sum(self.per_unit[u] for u in m.removed()) for m in masks]


def make_costs(lm, space: UnitSpace, names: Sequence[str] | str | None, **options) -> list[Cost]:
    """``--minimize params,latency`` -> cost objects; unknown names are one line listing the choices."""
    if not names:
        return []
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if len(set(names)) != len(names):
        raise UserError(f"--minimize names a cost twice: {','.join(names)}")
    out = []  # each cost takes its own options (Problem.validate refuses one that no cost takes)
    for name in names:
        factory = COSTS.get(name)
        out.append(factory(lm, space, **{k: v for k, v in options.items() if k in factory.OPTIONS}))
    return out


def check_cost_options(names: Sequence[str], options: dict) -> None:
    """Every ``--cost-option`` must be taken by a cost the run minimises or caps: never dropped."""
    taken = {k for name in names for k in COSTS.get(name).OPTIONS}
    for key in options:
        if key not in taken:
            raise UserError(f"--cost-option {key}: no cost of this run takes it"
                            f" ({', '.join(sorted(taken)) or 'they take none'}; costs: {', '.join(names) or 'none'})")
