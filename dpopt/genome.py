"""LayerMask, the genome every searcher proposes and the evaluator scores.

A mask is a bitstring with one bit per removable unit; ``True`` means the unit is KEPT. A
:class:`UnitSpace` says what the units are: whole decoder blocks (``block.I``, the
default), or each block's attention and MLP sub-layers (``attn.I``, ``mlp.I``), always in
execution order so that a mask's prefix is a prefix of the network. Searchers see only
bits; the evaluator, the record and export read the names.

The search space is fixed by a :class:`Constraint`: exactly ``k`` units removed, never a
protected one. Operators here (swap mutation, crossover + repair) keep a mask inside that
space, because DEAP's stock ``mutFlipBit``/``cxTwoPoint`` would change how many units are
removed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np

from .errors import UserError


class LayerMask:
    """Immutable keep-mask over ``n_units`` blocks; hashable by its bits."""

    __slots__ = ("bits", "_key")

    def __init__(self, bits: Iterable[bool] | np.ndarray):
        arr = np.array(bits, dtype=bool).reshape(-1)
        arr.setflags(write=False)
        self.bits = arr
        self._key = np.packbits(arr).tobytes() + len(arr).to_bytes(4, "little")

    # --- construction -------------------------------------------------------------------
    @classmethod
    def dense(cls, n_units: int) -> "LayerMask":
        return cls(np.ones(n_units, dtype=bool))

    @classmethod
    def from_removed(cls, n_units: int, removed: Iterable[int]) -> "LayerMask":
        bits = np.ones(n_units, dtype=bool)
        for i in removed:
            bits[int(i)] = False
        return cls(bits)

    # --- identity -----------------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return int(self.bits.shape[0])

    def removed(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.flatnonzero(~self.bits))

    def kept(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.flatnonzero(self.bits))

    def key(self) -> bytes:
        return self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerMask) and self._key == other._key

    def __len__(self) -> int:
        return self.n_units

    def __repr__(self) -> str:
        return f"LayerMask(n={self.n_units}, removed={list(self.removed())})"

    # --- neighbours ---------------------------------------------------------------------
    def with_removed(self, i: int) -> "LayerMask":
        bits = self.bits.copy()
        bits[i] = False
        return LayerMask(bits)

    def with_kept(self, i: int) -> "LayerMask":
        bits = self.bits.copy()
        bits[i] = True
        return LayerMask(bits)


def parse_index_list(text: str | Sequence[int] | None, n_units: int, what: str = "index") -> tuple[int, ...]:
    """Parse ``"3,7,-1"`` into sorted unique non-negative indices; negatives count from the end."""
    if text is None:
        return ()
    if isinstance(text, str):
        parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise UserError(f"{what} list {text!r} must be comma-separated integers") from None
    else:
        values = [int(v) for v in text]
    out = set()
    for v in values:
        idx = v + n_units if v < 0 else v
        if not 0 <= idx < n_units:
            raise UserError(f"{what} {v} is out of range for a model with {n_units} blocks (0..{n_units - 1})")
        out.add(idx)
    return tuple(sorted(out))


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


@dataclass(frozen=True)
class Constraint:
    """The search space: masks over ``n_units`` units with exactly ``k`` removed, none protected.

    ``what`` only words the errors (``blocks``, ``sub-layer units``).
    """

    n_units: int
    k: int
    protect: tuple[int, ...] = field(default_factory=tuple)
    what: str = field(default="blocks", compare=False)

    def __post_init__(self) -> None:
        if self.n_units < 1:
            raise UserError(f"the model has no {self.what} to remove")
        if not 0 < self.k < self.n_units:
            raise UserError(
                f"--remove must be between 1 and {self.n_units - 1} for a model with {self.n_units} {self.what} "
                f"(got {self.k})"
            )
        for p in self.protect:
            if not 0 <= p < self.n_units:
                raise UserError(f"protected unit {p} is out of range (0..{self.n_units - 1})")
        if len(self.removable) < self.k:
            raise UserError(
                f"--protect leaves {len(self.removable)} removable {self.what}, fewer than the {self.k} to remove"
            )

    @classmethod
    def build(
        cls,
        n_units: int,
        remove: int | None = None,
        sparsity: float | None = None,
        protect: str | Sequence[int] | None = None,
        space: UnitSpace | None = None,
    ) -> "Constraint":
        """``protect`` names blocks; in a sub-layer ``space`` every unit of a protected block is kept."""
        if space is not None and space.kind != "block":
            if space.n_units != n_units:
                raise ValueError(f"space of {space.n_units} units for a constraint over {n_units}")
            blocks = parse_index_list(protect, space.n_blocks, "protected block")
            what = "sub-layer units" if space.kind == "sublayer" else "units"
            return cls._build(n_units, remove, sparsity, space.units_of_blocks(blocks), what)
        return cls._build(n_units, remove, sparsity, parse_index_list(protect, n_units, "protected block"), "blocks")

    @classmethod
    def _build(cls, n_units, remove, sparsity, protect, what) -> "Constraint":
        if (remove is None) == (sparsity is None):
            raise UserError("give exactly one of --remove K or --sparsity F")
        if sparsity is not None:
            if not 0.0 < sparsity < 1.0:
                raise UserError(f"--sparsity must be in (0, 1), got {sparsity}")
            remove = int(round(sparsity * n_units))
            if remove == 0:
                raise UserError(f"--sparsity {sparsity} removes none of {n_units} {what}")
        return cls(n_units, int(remove), tuple(protect), what)

    @property
    def removable(self) -> tuple[int, ...]:
        prot = set(self.protect)
        return tuple(i for i in range(self.n_units) if i not in prot)

    def is_valid(self, mask: LayerMask) -> bool:
        if mask.n_units != self.n_units or len(mask.removed()) != self.k:
            return False
        return all(mask.bits[p] for p in self.protect)

    # --- sampling and operators (all keep exactly k removed) ---------------------------
    def random_mask(self, rng: np.random.Generator) -> LayerMask:
        removed = rng.choice(np.array(self.removable), size=self.k, replace=False)
        return LayerMask.from_removed(self.n_units, removed)

    def swap_mutation(self, mask: LayerMask, rng: np.random.Generator, n_swaps: int = 1) -> LayerMask:
        """Exchange ``n_swaps`` kept-removable blocks with removed ones (EvoPress's move)."""
        bits = mask.bits.copy()
        prot = np.zeros(self.n_units, dtype=bool)
        prot[list(self.protect)] = True
        for _ in range(n_swaps):
            kept = np.flatnonzero(bits & ~prot)
            removed = np.flatnonzero(~bits)
            if len(kept) == 0 or len(removed) == 0:
                break
            i = rng.choice(kept)
            j = rng.choice(removed)
            bits[i], bits[j] = False, True
        return LayerMask(bits)

    def repair(self, bits: np.ndarray, rng: np.random.Generator) -> LayerMask:
        """Project any bitstring onto the space: restore protected blocks, then fix the count.

        Blocks to flip are chosen at random so that repair does not bias the search
        toward either end of the network.
        """
        bits = np.array(bits, dtype=bool).copy()
        bits[list(self.protect)] = True
        removed = np.flatnonzero(~bits)
        if len(removed) > self.k:
            restore = rng.choice(removed, size=len(removed) - self.k, replace=False)
            bits[restore] = True
        elif len(removed) < self.k:
            prot = np.zeros(self.n_units, dtype=bool)
            prot[list(self.protect)] = True
            candidates = np.flatnonzero(bits & ~prot)
            drop = rng.choice(candidates, size=self.k - len(removed), replace=False)
            bits[drop] = False
        return LayerMask(bits)

    def from_scores(self, scores: Sequence[float]) -> LayerMask:
        """Keep the ``n - k`` highest-scoring blocks; protected blocks are always kept.

        This is how continuous searchers (CMA-ES, Bayesian optimisation over scores) land
        on exactly ``k`` removed without any repair step. Ties break toward lower index.
        """
        scores = np.asarray(scores, dtype=float)
        removable = np.array(self.removable)
        order = removable[np.lexsort((removable, scores[removable]))]  # ascending score
        return LayerMask.from_removed(self.n_units, order[: self.k])
