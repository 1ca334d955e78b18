"""One-shot importance baselines: the cheap answer every search is judged against.

Both read the dense model's hidden-state similarities (``Evaluator.block_stats``), pick a
mask without any search, and ask it once, so the run records it like any other searcher.
"""
from __future__ import annotations

import numpy as np

from ..genome import Constraint, LayerMask
from ._common import SearcherBase
from .base import register_searcher


class _OneShot(SearcherBase):
    needs_block_stats = True  # run_search's caller passes stats=evaluator.block_stats()
    objective_blind = True
    one_shot = True

    def __init__(self, constraint: Constraint, seed: int = 0, stats: dict | None = None):
        super().__init__(constraint, seed)
        if stats is None:
            raise ValueError(f"{self.name} needs the dense model's block statistics (stats=evaluator.block_stats())")
        self.mask = self.choose(constraint, stats)

    def choose(self, constraint: Constraint, stats: dict) -> LayerMask:
        raise NotImplementedError

    def _ask(self) -> list[LayerMask]:
        self._done = True
        return [self.mask]


@register_searcher("bi")
class BlockInfluence(_OneShot):
    """ShortGPT: remove the k blocks whose output is most similar to their input (1 - cos)."""

    name = "bi"

    def choose(self, constraint, stats):
        cos = stats["cos"]
        influence = np.array([1.0 - cos[i, i + 1] for i in range(constraint.n_units)])
        return constraint.from_scores(influence)  # keeps the most influential blocks


@register_searcher("angular")
class AngularSpan(_OneShot):
    """Gromov et al.: remove the contiguous span of k blocks whose ends are closest in angle."""

    name = "angular"

    def choose(self, constraint, stats):
        ang, k = stats["angular"], constraint.k
        protected = set(constraint.protect)
        best, best_start = float("inf"), None
        for start in range(constraint.n_units - k + 1):
            if protected & set(range(start, start + k)):
                continue
            if ang[start, start + k] < best:
                best, best_start = ang[start, start + k], start
        if best_start is None:  # protected blocks split every span: fall back to the best k singles
            return constraint.from_scores(np.array([ang[i, i + 1] for i in range(constraint.n_units)]))
        span = LayerMask.from_removed(constraint.n_units, range(best_start, best_start + k))
        if constraint.is_valid(span):
            return span
        # a parameter budget the span misses: rank single blocks by the same angle instead
        return constraint.from_scores(np.array([ang[i, i + 1] for i in range(constraint.n_units)]))
