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


@register_searcher("last")
class DropLast(SearcherBase):
    """Remove the k blocks just before the final one ("Reassessing Layer Pruning", ICLR 2026:
    with light healing this simple rule beats fancier selection). One evaluation.

    Options: ``keep_final`` (bool, default True): keep the final block, as that paper does;
    False removes the last k blocks outright. Protected blocks are skipped (the next
    earlier ones go instead); under a parameter budget, as many as it needs.
    """

    name = "last"
    objective_blind = True
    one_shot = True

    def __init__(self, constraint: Constraint, seed: int = 0, keep_final: bool = True):
        super().__init__(constraint, seed)
        if not isinstance(keep_final, bool):
            raise ValueError(f"keep_final must be true or false, got {keep_final!r}")
        n = constraint.n_units
        importance = np.arange(n, 0, -1, dtype=float)  # later units matter less ...
        if keep_final:
            importance[n - 1] = np.inf  # ... except the final one
        self.mask = constraint.from_scores(importance)

    def _ask(self) -> list[LayerMask]:
        self._done = True
        return [self.mask]
