"""Uniform random search without repeats: the baseline every clever searcher must beat.

Small spaces are enumerated and shuffled so the search ends exactly when the space is
exhausted; large ones are sampled by rejection, where a repeat is rare.
"""
from __future__ import annotations

from ..genome import Constraint, LayerMask
from ._common import SearcherBase, check_int, space_size
from .base import register_searcher

ENUMERATE_LIMIT = 100_000  # spaces up to this size are listed up front (a few MB at most)


@register_searcher("random")
class RandomSearch(SearcherBase):
    """Uniform valid masks (exactly k removed, or a count drawn from the range), never the same one twice.

    Options: ``batch_size`` (int >= 1, default 16): masks per ask.
    """

    name = "random"
    multi_objective = True  # it ignores what it is told, so any number of objectives will do
    objective_blind = True  # the same seed draws the same masks under every objective

    def __init__(self, constraint: Constraint, seed: int = 0, batch_size: int = 16):
        super().__init__(constraint, seed)
        self.batch_size = check_int("batch_size", batch_size)
        self.space = space_size(constraint)
        self._asked: set[bytes] = set()
        self._queue: list[tuple[int, ...]] | None = None
        if self.space <= ENUMERATE_LIMIT:
            combos = list(constraint.enumerate())
            order = self.rng.permutation(len(combos))
            self._queue = [combos[i] for i in order[::-1]]  # pop() from the end

    def _draw(self) -> LayerMask | None:
        if self._queue is not None:
            if not self._queue:
                return None
            return LayerMask.from_removed(self.constraint.n_units, self._queue.pop())
        for _ in range(1000):
            m = self.constraint.random_mask(self.rng)
            if m.key() not in self._asked:
                return m
        return None  # a huge space this crowded is not reachable in practice

    def _ask(self) -> list[LayerMask]:
        batch: list[LayerMask] = []
        while len(batch) < self.batch_size:
            m = self._draw()
            if m is None:
                break
            self._asked.add(m.key())
            batch.append(m)
        if self._queue is not None and not self._queue or not batch:
            self._done = True
        return batch
