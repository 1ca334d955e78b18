"""LayerMask, the genome every searcher proposes and the evaluator scores: one bit per unit, True = KEPT."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..errors import UserError


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

    @classmethod
    def from_key(cls, key: bytes) -> "LayerMask":
        """The mask whose :meth:`key` this is (memo keys name masks)."""
        n = int.from_bytes(key[-4:], "little")
        return cls(np.unpackbits(np.frombuffer(key[:-4], dtype=np.uint8))[:n].astype(bool))

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
