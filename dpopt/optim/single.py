"""One-shot baseline: score each block's removal alone, then remove the ``k`` least harmful.

Costs ``removable + 1`` evaluations and ignores interactions between blocks; that is the
point of it: it shows how much the searchers gain from modelling them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..genome import Constraint, LayerMask
from ._common import SearcherBase
from .base import register_searcher


@register_searcher("single")
class SingleShot(SearcherBase):
    """Score each block removed alone, then remove the k least harmful (removable + 1 evaluations).

    Options: none. Ties in single-removal fitness go to the lower block index.
    """

    name = "single"

    def __init__(self, constraint: Constraint, seed: int = 0):
        super().__init__(constraint, seed)
        self._stage = "probe"  # -> "final" -> done
        self.harm: dict[int, float] = {}
        self.final: LayerMask | None = None

    def ask(self) -> list[LayerMask]:
        if self._done:
            return []
        n = self.constraint.n_units
        if self._stage == "probe":
            return [LayerMask.from_removed(n, [i]) for i in self.constraint.removable]
        # blocks never scored (budget cut the probe batch) rank as most harmful
        harm = np.array([self.harm.get(i, np.inf) for i in range(n)])
        self.final = self.constraint.from_scores(harm)
        return [self.final]

    def tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        self._record(masks, fitness)
        if not len(masks):
            return
        if self._stage == "probe":
            for m, f in zip(masks, np.asarray(fitness, dtype=float)):
                (i,) = m.removed()
                self.harm[i] = float(f)
            self._stage = "final"
        else:
            self._done = True
