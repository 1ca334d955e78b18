"""Removable units of a model: whole blocks, or a block's attention and MLP sub-layers.

A unit is named ``block.I``, ``attn.I`` or ``mlp.I`` with ``I`` the ORIGINAL 0-based block
index, the same names in a search's result, in an exported config
(``dpopt_removed_units``) and in parameter budgets. :func:`plan_units` resolves a set of
removed names against one model into what execution and export need: the blocks dropped
outright and, per kept block, the sub-layers silenced. A block whose attention and MLP are
both removed is dropped (it is then the identity, exactly) unless the family's block is
post-norm, where the norm after the residual add still acts and the block must stay.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..errors import UserError
from .families import get_path

BLOCK = "block"


def unit_name(kind: str, block: int) -> str:
    return f"{kind}.{block}"


def sublayer_unit_names(masked) -> list[str]:
    """Every sub-layer unit of the model in execution order: ``attn.0, mlp.0, attn.1, ...``."""
    kinds = masked.sublayer_names()
    return [unit_name(kind, i) for i in range(masked.n_blocks) for kind in kinds]


def parse_unit(name: str, n_blocks: int, kinds: Iterable[str]) -> tuple[str, int]:
    kinds = tuple(kinds)
    kind, sep, index = str(name).strip().partition(".")
    allowed = (BLOCK, *kinds)
    if not sep or kind not in allowed or not index.isdigit():
        raise UserError(f"bad unit {name!r}: expected one of {', '.join(k + '.I' for k in allowed)}"
                        f" with I a block index")
    block = int(index)
    if not 0 <= block < n_blocks:
        raise UserError(f"bad unit {name!r}: block index out of range 0..{n_blocks - 1}")
    return kind, block


@dataclass(frozen=True)
class UnitPlan:
    """Removed units resolved against one model."""

    n_blocks: int
    dropped: tuple[int, ...]  # blocks removed outright, sorted
    silenced: dict[int, frozenset[str]]  # kept block -> sub-layer kinds silenced in it

    def kept(self) -> tuple[int, ...]:
        gone = set(self.dropped)
        return tuple(i for i in range(self.n_blocks) if i not in gone)

    def skip(self, block: int) -> frozenset[str]:
        return self.silenced.get(block, frozenset())

    def names(self) -> list[str]:
        """The canonical removed-unit names, by block then kind."""
        out = []
        for i in range(self.n_blocks):
            if i in self.dropped:
                out.append(unit_name(BLOCK, i))
            out.extend(unit_name(kind, i) for kind in sorted(self.skip(i)))
        return out


def plan_units(masked, removed: Iterable[str]) -> UnitPlan:
    """Resolve removed unit names; sub-layer names on a family that cannot split blocks fail."""
    family = masked.family
    kinds = tuple(family.sublayers or ())
    parsed = [_parse(masked, name, kinds) for name in removed]
    whole = {i for kind, i in parsed if kind == BLOCK}
    parts: dict[int, set[str]] = {}
    for kind, i in parsed:
        if kind != BLOCK and i not in whole:
            parts.setdefault(i, set()).add(kind)
    if kinds and family.empty_block_is_identity(masked.model.config):
        whole |= {i for i, got in parts.items() if got >= set(kinds)}
    silenced = {i: frozenset(got) for i, got in parts.items() if i not in whole}
    return UnitPlan(masked.n_blocks, tuple(sorted(whole)), silenced)


def _parse(masked, name: str, kinds: tuple[str, ...]) -> tuple[str, int]:
    if not kinds and str(name).strip().partition(".")[0] in ("attn", "mlp"):
        masked.require_sublayers()  # the family cannot split blocks: its one-line UserError
    return parse_unit(name, masked.n_blocks, kinds)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def unit_param_counts(masked) -> dict[str, int]:
    """Parameters each sub-layer unit owns (its projections and its own norms), ``attn.I``/``mlp.I``.

    For every registered family the sub-layers of a block partition its parameters, so
    ``attn.I + mlp.I`` equals block I's count; removing a sub-layer makes these parameters
    dead. An exported checkpoint still stores them (zeroed), see :mod:`dpopt.models.export`.
    """
    masked.require_sublayers()
    counts: dict[str, int] = {}
    for i, block in enumerate(masked.blocks):
        for kind, sub in masked.family.sublayers.items():
            total = 0
            for path in sub.params:
                try:
                    module = get_path(block, path)
                except AttributeError:
                    continue
                total += _params(module)
            counts[unit_name(kind, i)] = total
    return counts
