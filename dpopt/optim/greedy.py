"""Greedy block removal (and its mirror, greedy addition): the classic one-block-at-a-time baseline.

Both are beam search with a beam of one, so ``beam.py`` reuses :class:`StepwiseSearch`.
Intermediate steps have a different number of blocks removed than ``k``; only the mask
reached at the end satisfies the constraint, and only valid masks count toward ``best``.
Protected blocks are never touched, not even in intermediate steps.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..genome import Constraint, LayerMask
from ._common import SearcherBase, check_int
from .base import register_searcher


class StepwiseSearch(SearcherBase):
    """Beam search over single-block moves from an end of the space toward ``k`` removed.

    ``direction="remove"`` starts from the dense model and removes one block per step;
    ``direction="add"`` starts with every removable block removed and restores one per step.
    Each ask is the whole neighbourhood of the beam (one evaluator call per step).
    """

    name = "stepwise"

    def __init__(self, constraint: Constraint, seed: int = 0, width: int = 1, direction: str = "remove"):
        super().__init__(constraint, seed)
        self.width = check_int("width", width)
        if direction not in ("remove", "add"):
            raise ValueError(f"direction must be 'remove' or 'add', got {direction!r}")
        self.direction = direction
        n = constraint.n_units
        if direction == "remove":
            start = LayerMask.dense(n)
        else:
            start = LayerMask.from_removed(n, constraint.removable)
        self.beam: list[LayerMask] = [start]
        self._pending: list[LayerMask] = []
        # greedy-add with nothing to restore: the start itself is the answer, but still needs a score
        self._only_start = self._final(start)

    def _final(self, mask: LayerMask) -> bool:
        """Removing: the first valid mask (fewest units removed). Adding back: the fewest removed
        the space allows, or no unit can come back without leaving it."""
        if self.direction == "remove":
            return self.constraint.is_valid(mask)
        return len(mask.removed()) <= self.constraint.k or not self._neighbours(mask)

    def _neighbours(self, mask: LayerMask) -> list[LayerMask]:
        if self.direction == "remove":
            return [mask.with_removed(i) for i in self.constraint.removable if mask.bits[i]]
        back = [mask.with_kept(i) for i in self.constraint.removable if not mask.bits[i]]
        if not self.constraint.budgeted:
            return back
        return [m for m in back if self.constraint.is_valid(m)]  # a parameter budget: only moves that keep it

    def _ask(self) -> list[LayerMask]:
        if self._only_start:
            self._pending = list(self.beam)
        else:
            # dict.fromkeys: dedupe across beam members while keeping a deterministic order
            self._pending = list(dict.fromkeys(m for b in self.beam for m in self._neighbours(b)))
        return list(self._pending)

    def _tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        if len(masks) == 0:
            return  # nothing learnt (budget ran out): the same step is proposed again
        order = np.argsort(fitness, kind="stable")
        new_beam: list[LayerMask] = []
        for i in order:
            if masks[i] not in new_beam:
                new_beam.append(masks[i])
            if len(new_beam) >= self.width:
                break
        self.beam = new_beam
        if self._only_start or self._final(self.beam[0]):
            self._done = True


@register_searcher("greedy")
class GreedyRemove(StepwiseSearch):
    """Remove the block whose removal hurts least, ``k`` times.

    Options: none (``seed`` is accepted but greedy is deterministic; ties go to the lower block).
    Cost: about ``k * removable`` evaluations.
    """

    name = "greedy"

    def __init__(self, constraint: Constraint, seed: int = 0):
        super().__init__(constraint, seed, width=1, direction="remove")


@register_searcher("greedy-add")
class GreedyAdd(StepwiseSearch):
    """Start from the smallest allowed model and restore the most helpful block until ``k`` remain removed.

    Useful when ``k`` is close to the number of removable blocks, where removal-greedy needs
    many steps and addition-greedy few. Options: none.
    """

    name = "greedy-add"

    def __init__(self, constraint: Constraint, seed: int = 0):
        super().__init__(constraint, seed, width=1, direction="add")
