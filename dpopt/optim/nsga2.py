"""NSGA-II over masks: a Pareto front of quality against size or speed in one run.

``dpopt search --objective kl --minimize latency --algo nsga2 --remove 2:12`` tells this
searcher one row per mask, ``[signed objective, cost, ...]``, all minimised. Selection is
DEAP's ``selNSGA2`` (non-dominated sorting, then crowding distance) over parents and
children together, i.e. (mu + lambda) as in Deb et al. Variation reuses the genome's
operators so every child stays inside the constraint: uniform crossover then repair,
then either EvoPress's level-switch swaps (same size, other units) or a resize move (one
unit more or fewer), which is what walks the population along the size axis of the front.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from deap import base, tools

from ..genome import Constraint, LayerMask
from ._common import SearcherBase, check_float, check_int, level_switch_swaps, random_unseen, space_size
from .base import register_searcher

_BIG = 1e300  # a failed mask: dominated by every scored one, without inf in crowding distances


class _Point(list):
    """A mask's bits with a DEAP fitness, the form ``selNSGA2`` sorts."""

    def __init__(self, mask: LayerMask, values: Sequence[float], fitness_cls):
        super().__init__(mask.bits.tolist())
        self.mask = mask
        self.fitness = fitness_cls()
        self.fitness.values = tuple(float(v) if np.isfinite(v) else _BIG for v in values)


@register_searcher("nsga2")
class NSGA2Search(SearcherBase):
    """NSGA-II with the genome's operators; with one objective it is a (mu + lambda) GA.

    Options:
      ``population`` (24): masks kept between generations (mu), also the first batch of random masks.
      ``offspring`` (population): children per generation (lambda).
      ``cxpb`` (0.5): chance a child comes from uniform crossover of two parents (then repair).
      ``resize`` (0.5): chance its mutation is a resize move rather than level-switch swaps.
      ``max_swaps`` (3): swaps are ``min(U{1,max}, U{1,max})``, as EvoPress.
    """

    name = "nsga2"
    multi_objective = True

    def __init__(self, constraint: Constraint, seed: int = 0, population: int = 24, offspring: int | None = None,
                 cxpb: float = 0.5, resize: float = 0.5, max_swaps: int = 3):
        super().__init__(constraint, seed)
        self.mu = check_int("population", population, minimum=2)
        self.lam = check_int("offspring", offspring if offspring is not None else self.mu)
        self.cxpb = check_float("cxpb", cxpb, 0.0, 1.0)
        self.resize = check_float("resize", resize, 0.0, 1.0)
        self.max_swaps = check_int("max_swaps", max_swaps)
        self.space = space_size(constraint)
        self.population: list[_Point] = []
        self.generation = 0
        self._asked: set[bytes] = set()
        self._fitness_cls = None

    def _variant(self) -> LayerMask:
        c = self.constraint
        parents = self.population
        if len(parents) >= 2 and self.rng.random() < self.cxpb:
            i, j = self.rng.choice(len(parents), size=2, replace=False)
            take = self.rng.random(c.n_units) < 0.5
            bits = np.where(take, parents[i].mask.bits, parents[j].mask.bits)
            child = c.repair(bits, self.rng, tight=False)
        else:
            child = parents[int(self.rng.integers(len(parents)))].mask
        if self.rng.random() < self.resize and c.k < c.k_max:
            return c.resize_mutation(child, self.rng)
        return c.swap_mutation(child, self.rng, level_switch_swaps(self.rng, self.max_swaps))

    def _ask(self) -> list[LayerMask]:
        want = self.mu if not self.population else self.lam
        batch: dict[bytes, LayerMask] = {}
        for _ in range(want * 20):
            if len(batch) >= want or len(self._asked) + len(batch) >= self.space:
                break
            m = self._variant() if self.population else self.constraint.random_mask(self.rng)
            if m.key() in self._asked or m.key() in batch:
                continue
            batch[m.key()] = m
        if len(batch) < want:  # a crowded neighbourhood: fill with any unseen valid mask
            while len(batch) < want:
                m = random_unseen(self.constraint, self.rng, self._asked, set(batch))
                if m is None:
                    break
                batch[m.key()] = m
        if not batch:
            self._done = True
        self._asked.update(batch)
        return list(batch.values())

    def _tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        values = np.asarray(fitness, dtype=float)
        if values.ndim == 1:
            values = values[:, None]
        if not len(masks):
            return
        if self._fitness_cls is None:
            self._fitness_cls = type("MinAll", (base.Fitness,), {"weights": (-1.0,) * values.shape[1]})
        told = [_Point(m, v, self._fitness_cls) for m, v in zip(masks, values) if self.constraint.is_valid(m)]
        pool = {p.mask.key(): p for p in self.population + told}
        self.population = tools.selNSGA2(list(pool.values()), min(self.mu, len(pool)))
        self.generation += 1
