"""UnitSpace: what each bit of a mask removes (a whole block, or a block's attention or MLP)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

from ..errors import UserError
from .mask import LayerMask


BLOCK_UNIT = "block"


@dataclass(frozen=True)
class UnitSpace:
    """What each bit of a mask removes: a whole block, or some sub-layers of one block.

    ``units[u] = (block, kinds)``: ``kinds`` is None for a whole block, else the sub-layer
    kinds (``"attn"``, ``"mlp"``) that unit ``u`` silences in ``block``. Units are sorted by
    block, so the units of block ``l`` are ``bounds[l]:bounds[l + 1]`` and a mask's bits up
    to ``bounds[l]`` decide everything before block ``l`` (the evaluator's prefix tree).

    ``kind`` names the space in a result and in the record: ``block``, ``sublayer``,
    ``sublayer-tied`` (EvoPress's ``drop_entire_block``: attention and MLP of a block removed
    together, one bit per block) or ``mixed`` (what ``--remove attn.3,12`` names for eval).
    """

    kind: str
    n_blocks: int
    units: tuple[tuple[int, frozenset[str] | None], ...]
    names: tuple[str, ...]

    # --- the spaces ---------------------------------------------------------------------
    @classmethod
    def blocks(cls, n_blocks: int) -> "UnitSpace":
        return cls("block", n_blocks, tuple((i, None) for i in range(n_blocks)),
                   tuple(f"{BLOCK_UNIT}.{i}" for i in range(n_blocks)))

    @classmethod
    def sublayers(cls, n_blocks: int, kinds: Sequence[str], tie: bool = False,
                  whole: Iterable[int] = ()) -> "UnitSpace":
        """Attention and MLP per block (``kinds`` in execution order); with ``tie`` one bit
        removes all of a block's sub-layers; blocks in ``whole`` stay one ``block.I`` unit."""
        kinds = tuple(kinds)
        whole = set(whole)
        units, names = [], []
        for i in range(n_blocks):
            if i in whole:
                units.append((i, None))
                names.append(f"{BLOCK_UNIT}.{i}")
            elif tie:
                units.append((i, frozenset(kinds)))
                names.append(f"{BLOCK_UNIT}.{i}")
            else:
                for kind in kinds:
                    units.append((i, frozenset([kind])))
                    names.append(f"{kind}.{i}")
        kind = "mixed" if whole else ("sublayer-tied" if tie else "sublayer")
        return cls(kind, n_blocks, tuple(units), tuple(names))

    # --- reading a mask -----------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return len(self.units)

    @cached_property
    def bounds(self) -> tuple[int, ...]:
        """``bounds[l]``: index of block ``l``'s first unit; ``bounds[n_blocks] = n_units``."""
        out = [0] * (self.n_blocks + 1)
        for block, _ in self.units:
            out[block + 1] += 1
        for i in range(self.n_blocks):
            out[i + 1] += out[i]
        return tuple(out)

    def block_removal(self, block: int, bits: Sequence[bool]) -> frozenset[str] | None:
        """What ``bits`` (block ``block``'s own slice of a mask) remove: None = the whole block,
        else the sub-layer kinds to silence (empty: the block runs in full)."""
        lo = self.bounds[block]
        skip: set[str] = set()
        for (_, kinds), keep in zip(self.units[lo:lo + len(bits)], bits):
            if not keep:
                if kinds is None:
                    return None
                skip |= kinds
        return frozenset(skip)

    def removed_names(self, mask: "LayerMask") -> list[str]:
        """What ``mask`` removes as unit names for :func:`dpopt.models.units.plan_units`
        (a tied unit stands for all of its block's sub-layers)."""
        out = []
        for u in mask.removed():
            block, kinds = self.units[u]
            out.extend([self.names[u]] if kinds is None else [f"{k}.{block}" for k in sorted(kinds)])
        return out

    def mask(self, removed: Iterable[str]) -> "LayerMask":
        """The mask removing the named units of this space (names as in ``self.names``)."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in removed if n not in index]
        if missing:
            raise UserError(f"{', '.join(missing)} not a unit of this {self.kind} space")
        return LayerMask.from_removed(self.n_units, [index[n] for n in removed])

    def units_of_blocks(self, blocks: Iterable[int]) -> tuple[int, ...]:
        """Every unit inside the given blocks (``--protect`` names blocks in any space)."""
        wanted = set(blocks)
        return tuple(u for u, (b, _) in enumerate(self.units) if b in wanted)
