"""Simulated annealing with EvoPress's swap moves, one Metropolis decision per batch of neighbours.

Why it is built this way rather than as textbook annealing (one decision per neighbour,
a temperature from the fitness spread of random masks), which wanders like random search:
- Start from the best of a batch of random masks, not from one random mask: the walk
  then begins where random search would already be after that many evaluations.
- Each ask is ``batch_size`` neighbours of the current mask (``min(U{1,3}, U{1,3})``
  swaps, mostly one); the best of them is the move considered, so the evaluator scores
  a whole batch at once and the walk does not drift on the first worse neighbour.
- The temperature is set from the median |fitness change| of the first neighbours,
  not from the spread of random masks: perplexity of random masks is heavy-tailed, and
  a temperature on that scale makes the walk a random one for most of the budget.
- Cooling is geometric per evaluation; after ``patience`` batches without a new best
  the walk restarts from the best mask, partly reheated.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..genome import Constraint, LayerMask
from ._common import SearcherBase, check_float, check_int, level_switch_swaps, random_unseen, space_size
from .base import register_searcher


@register_searcher("anneal")
class AnnealSearch(SearcherBase):
    """Simulated annealing: batched swap neighbours, self-calibrated temperature, restarts from the best.

    Options:
      ``batch_size`` (16): neighbours of the current mask per ask (and random masks in the first ask).
      ``cooling`` (0.99): temperature factor per evaluation.
      ``t0_scale`` (1.0): initial temperature as a multiple of the first neighbours' median |change|.
      ``patience`` (4): batches without a new best before restarting from the best.
      ``reheat`` (0.5): temperature after a restart, as a fraction of the initial one.
      ``max_steps`` (None): neighbours scored after which the searcher is done (None: until the budget ends).
    """

    name = "anneal"

    def __init__(self, constraint: Constraint, seed: int = 0, batch_size: int = 16, cooling: float = 0.99,
                 t0_scale: float = 1.0, patience: int = 4, reheat: float = 0.5, max_steps: int | None = None):
        super().__init__(constraint, seed)
        self.batch_size = check_int("batch_size", batch_size)
        self.cooling = check_float("cooling", cooling, 0.0, 1.0, open_low=True)
        self.t0_scale = check_float("t0_scale", t0_scale, 0.0, open_low=True)
        self.patience = check_int("patience", patience)
        self.reheat = check_float("reheat", reheat, 0.0, open_low=True)
        self.max_steps = check_int("max_steps", max_steps, allow_none=True)
        self.space = space_size(constraint)
        self.current: LayerMask | None = None  # set from the first (random) batch
        self.current_fit = math.inf
        self.t0: float | None = None
        self.temperature: float | None = None
        self.steps = 0  # neighbours scored
        self.restarts = 0
        self._since_best = 0
        self._asked: set[bytes] = set()

    def _neighbour(self, taken: set[bytes]) -> LayerMask | None:
        """A swap neighbour not asked before; farther moves, then any unseen mask, if none is left."""
        for extra in range(self.constraint.k):
            for _ in range(20):
                n_swaps = min(level_switch_swaps(self.rng) + extra, self.constraint.k)
                m = self.constraint.swap_mutation(self.current, self.rng, n_swaps)
                if m.key() not in self._asked and m.key() not in taken:
                    return m
        return random_unseen(self.constraint, self.rng, self._asked, taken)

    def _ask(self) -> list[LayerMask]:
        batch: list[LayerMask] = []
        taken: set[bytes] = set()
        while len(batch) < self.batch_size and len(self._asked) + len(batch) < self.space:
            if self.current is None:
                m = random_unseen(self.constraint, self.rng, self._asked, taken)
            else:
                m = self._neighbour(taken)
            if m is None:
                break
            taken.add(m.key())
            batch.append(m)
        self._asked |= taken
        if not batch:
            self._done = True
        return batch

    def _tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        if not len(masks):
            return
        i = int(np.argmin(fitness))
        if self.current is None:  # the random start batch: begin at its best
            self.current, self.current_fit = masks[i], float(fitness[i])
            return
        self.steps += len(masks)
        if self.t0 is None:
            deltas = np.abs(fitness[np.isfinite(fitness)] - self.current_fit)
            deltas = deltas[np.isfinite(deltas) & (deltas > 0)]
            scale = float(np.median(deltas)) if len(deltas) else 1e-6 * max(abs(self.current_fit), 1e-6)
            self.t0 = self.temperature = self.t0_scale * scale
        delta = float(fitness[i]) - self.current_fit
        if delta <= 0 or (math.isfinite(delta) and self.rng.random() < math.exp(-delta / self.temperature)):
            self.current, self.current_fit = masks[i], float(fitness[i])
        self.temperature *= self.cooling ** len(masks)
        self._since_best = 0 if self.improved else self._since_best + 1
        if self._since_best >= self.patience and self.best[0] is not None:
            self.current, self.current_fit = self.best
            self.temperature = self.t0 * self.reheat
            self._since_best = 0
            self.restarts += 1
        if len(self._asked) >= self.space or (self.max_steps is not None and self.steps >= self.max_steps):
            self._done = True
