"""Simulated annealing with swap moves, batched so the evaluator scores several neighbours at once.

Fitness scales differ wildly between objectives (perplexity vs. KL vs. accuracy), so the
initial temperature is not an option in fitness units: it is the spread (std) of the
first batch of fitness values, times ``t0_scale``. Cooling is geometric per decision.
When the best has not improved for ``patience`` decisions the walk restarts from the best
mask, partly reheated, instead of freezing wherever it happens to be.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..genome import Constraint, LayerMask
from ._common import SearcherBase, check_float, check_int, random_unseen, space_size
from .base import register_searcher


@register_searcher("anneal")
class AnnealSearch(SearcherBase):
    """Simulated annealing with swap moves, self-calibrated temperature and restarts from the best.

    Options:
      ``batch_size`` (8): neighbours of the current mask per ask; told ones are accepted or
      rejected (Metropolis) in order, moving the current mask as they go.
      ``cooling`` (0.97): temperature factor per decision.
      ``t0_scale`` (1.0): initial temperature as a multiple of the first batch's fitness std.
      ``patience`` (60): decisions without a new best before restarting from the best.
      ``reheat`` (0.3): temperature after a restart, as a fraction of the initial one.
      ``max_steps`` (None): decisions after which the searcher is done (None: until the budget ends).
    """

    name = "anneal"

    def __init__(self, constraint: Constraint, seed: int = 0, batch_size: int = 8, cooling: float = 0.97,
                 t0_scale: float = 1.0, patience: int = 60, reheat: float = 0.3, max_steps: int | None = None):
        super().__init__(constraint, seed)
        self.batch_size = check_int("batch_size", batch_size)
        self.cooling = check_float("cooling", cooling, 0.0, 1.0, open_low=True)
        self.t0_scale = check_float("t0_scale", t0_scale, 0.0, open_low=True)
        self.patience = check_int("patience", patience)
        self.reheat = check_float("reheat", reheat, 0.0, open_low=True)
        self.max_steps = check_int("max_steps", max_steps, allow_none=True)
        self.space = space_size(constraint)
        self.current = constraint.random_mask(self.rng)
        self.current_fit: float | None = None  # unknown until the first tell
        self.t0: float | None = None
        self.temperature: float | None = None
        self.steps = 0
        self.restarts = 0
        self._since_best = 0
        self._asked: set[bytes] = set()

    def _neighbour(self, taken: set[bytes]) -> LayerMask | None:
        """A swap neighbour not asked before; farther moves, then any unseen mask, if none is left."""
        for n_swaps in range(1, self.constraint.k + 1):
            for _ in range(20):
                m = self.constraint.swap_mutation(self.current, self.rng, n_swaps)
                if m.key() not in self._asked and m.key() not in taken:
                    return m
        return random_unseen(self.constraint, self.rng, self._asked, taken)

    def ask(self) -> list[LayerMask]:
        if self._done:
            return []
        batch: list[LayerMask] = []
        if self.current_fit is None and self.current.key() not in self._asked:
            batch.append(self.current)
        taken = {m.key() for m in batch}
        while len(batch) < self.batch_size and len(self._asked) + len(batch) < self.space:
            m = self._neighbour(taken)
            if m is None:
                break
            taken.add(m.key())
            batch.append(m)
        self._asked |= taken
        if not batch:
            self._done = True
        return batch

    def tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        fitness = np.asarray(fitness, dtype=float)
        if not len(masks):
            return
        if self.t0 is None:
            finite = fitness[np.isfinite(fitness)]
            spread = float(np.std(finite)) if len(finite) > 1 else 0.0
            if spread <= 0:
                # flat first batch: fall back to a tiny temperature relative to the fitness level
                spread = 1e-6 * (abs(float(finite.mean())) if len(finite) else 1.0) or 1e-12
            self.t0 = self.temperature = self.t0_scale * spread
        for m, f in zip(masks, fitness):
            f = float(f)
            if m == self.current and self.current_fit is None:
                self.current_fit = f
                self._record([m], [f])
                continue
            self._decide(m, f)
        if len(self._asked) >= self.space or (self.max_steps is not None and self.steps >= self.max_steps):
            self._done = True

    def _decide(self, mask: LayerMask, f: float) -> None:
        """One Metropolis decision, then cool; restart from the best when stuck."""
        improved = f < self.best[1]
        self._record([mask], [f])
        cur = self.current_fit if self.current_fit is not None else math.inf
        delta = f - cur
        if delta <= 0 or (math.isfinite(delta) and self.rng.random() < math.exp(-delta / self.temperature)):
            self.current, self.current_fit = mask, f
        self.steps += 1
        self.temperature *= self.cooling
        self._since_best = 0 if improved else self._since_best + 1
        if self._since_best >= self.patience and self.best[0] is not None:
            self.current, self.current_fit = self.best
            self.temperature = self.t0 * self.reheat
            self._since_best = 0
            self.restarts += 1
