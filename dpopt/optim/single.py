"""One-shot baseline: score each block's removal alone, then remove the ``k`` least harmful.

Costs ``removable + 1`` evaluations and ignores interactions between blocks; that is the
point of it: it shows how much the searchers gain from modelling them. The genetic
searcher's ``init="single"`` runs the same probe stage to seed its first masks.
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
    one_shot = True  # one ranking of single removals, no search (yet it reads the objective)

    def __init__(self, constraint: Constraint, seed: int = 0):
        super().__init__(constraint, seed)
        self.probed = False  # the single removals have been told; then the ranked mask is asked
        self.harm: dict[int, float] = {}  # unit -> fitness with that unit alone removed
        self.final: LayerMask | None = None

    def probes(self) -> list[LayerMask]:
        """Every removable unit removed alone: one batch."""
        return [LayerMask.from_removed(self.constraint.n_units, [i]) for i in self.constraint.removable]

    def ranked(self) -> LayerMask:
        """The valid mask that removes the units least harmful alone.

        Units never scored (a budget cut the probe batch) rank as most harmful.
        """
        harm = np.array([self.harm.get(i, np.inf) for i in range(self.constraint.n_units)])
        return self.constraint.from_scores(harm)

    def _ask(self) -> list[LayerMask]:
        if not self.probed:
            return self.probes()
        self.final = self.ranked()
        return [self.final]

    def _tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        if not len(masks):
            return
        if not self.probed:
            for m, f in zip(masks, fitness):
                (i,) = m.removed()
                self.harm[i] = float(f)
            self.probed = True
        else:
            self._done = True
