"""Exhaustive search: the ground truth every other searcher is measured against.

It asks every valid mask once, sorted by their kept-unit bits, so neighbours in the ask
order share the longest prefixes of kept blocks: the evaluator's prefix tree computes a
shared prefix once per batch (and its LRU carries prefixes across batch edges), so a
space costs far less model work than one full forward per mask
(``benchmarks/brute_force.py`` prints the ratio).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError
from ..genome import Constraint, LayerMask
from ._common import SearcherBase, check_int
from .base import register_searcher

LIMIT = 200_000  # masks: past this, enumeration is hours of model work even with sharing


@register_searcher("brute")
class BruteForce(SearcherBase):
    """Every valid mask once, in prefix order; the best of them is the exact optimum.

    Options: ``batch_size`` (int >= 1, default 256): masks per ask (one prefix tree).
    """

    name = "brute"
    objective_blind = True  # the same masks in the same order under every objective

    def __init__(self, constraint: Constraint, seed: int = 0, batch_size: int = 256):
        super().__init__(constraint, seed)
        self.batch_size = check_int("batch_size", batch_size)
        size = constraint.size()
        if size is None or size > LIMIT:
            what = "a parameter budget leaves it uncounted" if size is None else f"it holds {size} masks"
            raise UserError(f"--algo brute enumerates the space, but {what} (limit {LIMIT}); lower --remove "
                            "or use another searcher")
        n = constraint.n_units
        masks = [LayerMask.from_removed(n, r) for r in constraint.enumerate()]
        self.order = sorted(masks, key=lambda m: m.bits.tobytes())  # removed (0) before kept: prefix order
        self._next = 0

    def _ask(self) -> list[LayerMask]:
        batch = self.order[self._next:self._next + self.batch_size]
        self._next += len(batch)
        if self._next >= len(self.order):
            self._done = True
        return batch

    def _tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        pass  # nothing to learn: the base keeps the best
