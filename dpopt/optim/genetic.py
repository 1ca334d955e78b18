"""Genetic algorithm on DEAP's Toolbox, with EvoPress's swap mutation and optional racing.

DEAP's stock bit-flip mutation and crossovers would change how many blocks are removed,
so every child is repaired back into the space (``Constraint.repair``) after mate and
mutate. Operators live in a ``deap.base.Toolbox`` so a variant can be tried by
re-registering ``mate``/``mutate``/``select`` on ``searcher.toolbox``; they follow DEAP's
conventions (individuals are lists of bools with a ``fitness`` attribute).

``deap.creator`` is global state shared by every importer, so the individual and fitness
classes are defined here instead. DEAP draws from the global ``random`` module; that is
swapped for a per-searcher stream while its operators run, so a seed fixes every ask.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from deap import base, tools

from ..errors import UserError
from ..genome import Constraint, LayerMask
from ._common import SearcherBase, check_float, check_int, private_global_random, random_unseen, space_size
from .base import register_searcher


class MinFitness(base.Fitness):
    weights = (-1.0,)  # dpopt fitness is always minimised


class Individual(list):
    """Keep-bits as a plain list (DEAP's crossovers swap slices in place, unsafe on numpy views)."""

    def __init__(self, bits=()):
        super().__init__(bool(b) for b in bits)
        self.fitness = MinFitness()

    @classmethod
    def of(cls, mask: LayerMask, fitness: float | None = None) -> "Individual":
        ind = cls(mask.bits.tolist())
        if fitness is not None:
            ind.fitness.values = (float(fitness),)
        return ind


def parse_race(race) -> list[tuple[int | None, int]] | None:
    """``[(fidelity, survivors), ...]`` cheapest first; survivors must shrink or stay."""
    if race is None or race == [] or race == ():
        return None
    try:
        schedule = [(None if f is None else int(f), int(s)) for f, s in race]
    except (TypeError, ValueError):
        raise UserError(f"genetic option race must be a list of (fidelity, survivors) pairs, got {race!r}") from None
    for f, s in schedule:
        if s < 1:
            raise UserError(f"genetic option race: survivors must be >= 1, got {s}")
        if f is not None and f < 1:
            raise UserError(f"genetic option race: fidelity must be >= 1, got {f}")
    return schedule


@register_searcher("genetic")
class GeneticSearch(SearcherBase):
    """Elitist generational GA over masks with exactly ``k`` removed.

    Options:
      ``population`` (32): parents kept between generations.
      ``offspring`` (= population): children asked per generation (one batch).
      ``elite`` (2): best parents carried over unchanged.
      ``crossover`` ("uniform" | "twopoint" | "none", default "uniform"), ``cxpb`` (0.5): mating probability.
      ``tournsize`` (3): tournament size for parent selection.
      ``min_swaps``/``max_swaps`` (1/3): swaps per mutation, drawn uniformly (EvoPress).
      ``race`` (None): ``[(fidelity, survivors), ...]``; when set, ``run_search`` scores each
      batch by multi-fidelity racing and tells only the survivors, which then compete with
      the elite for the next population.
    A child identical to any mask asked before in this run is discarded and redrawn.
    """

    name = "genetic"

    def __init__(self, constraint: Constraint, seed: int = 0, population: int = 32,
                 offspring: int | None = None, elite: int = 2, crossover: str = "uniform",
                 cxpb: float = 0.5, tournsize: int = 3, min_swaps: int = 1, max_swaps: int = 3,
                 race=None):
        super().__init__(constraint, seed)
        self.population_size = check_int("population", population)
        self.offspring_size = check_int("offspring", offspring if offspring is not None else self.population_size)
        self.elite = check_int("elite", elite, minimum=0)
        if self.elite > self.population_size:
            raise UserError(f"genetic option elite ({elite}) cannot exceed population ({population})")
        self.cxpb = check_float("cxpb", cxpb, 0.0, 1.0)
        self.min_swaps = check_int("min_swaps", min_swaps)
        self.max_swaps = check_int("max_swaps", max_swaps)
        if self.max_swaps < self.min_swaps:
            raise UserError(f"genetic option max_swaps ({max_swaps}) is below min_swaps ({min_swaps})")
        schedule = parse_race(race)
        if schedule is not None:
            self.race_schedule = schedule

        self.toolbox = base.Toolbox()
        self.toolbox.register("select", tools.selTournament, tournsize=check_int("tournsize", tournsize))
        if crossover == "uniform":
            self.toolbox.register("mate", tools.cxUniform, indpb=0.5)
        elif crossover == "twopoint":
            self.toolbox.register("mate", tools.cxTwoPoint)
        elif crossover == "none":
            self.cxpb = 0.0
        else:
            raise UserError(f"genetic option crossover must be uniform, twopoint or none, got {crossover!r}")
        self.toolbox.register("mutate", self._swap_mutate)

        self.space = space_size(constraint)
        self._asked: set[bytes] = set()
        self.population: list[Individual] = []
        self.generation = 0
        self._pyrandom = {"seed": self.seed}

    # --- operators ------------------------------------------------------------------------
    def _swap_mutate(self, ind: Individual) -> tuple[Individual]:
        n_swaps = int(self.rng.integers(self.min_swaps, self.max_swaps + 1))
        ind[:] = self.constraint.swap_mutation(LayerMask(ind), self.rng, n_swaps).bits.tolist()
        return (ind,)

    def _child(self) -> LayerMask:
        tb = self.toolbox
        if len(self.population) >= 2 and self.cxpb > 0 and self.rng.random() < self.cxpb:
            p1, p2 = tb.select(self.population, 2)
            c1, c2 = tb.clone(p1), tb.clone(p2)
            tb.mate(c1, c2)
            child = Individual(self.constraint.repair(np.array(c1), self.rng).bits)
        else:
            (p1,) = tb.select(self.population, 1)
            child = tb.clone(p1)
        (child,) = tb.mutate(child)
        return self.constraint.repair(np.array(child), self.rng)

    def _random_unseen(self, fresh: set[bytes]) -> LayerMask | None:
        return random_unseen(self.constraint, self.rng, self._asked, fresh)

    # --- protocol -------------------------------------------------------------------------
    def ask(self) -> list[LayerMask]:
        if self._done:
            return []
        batch: list[LayerMask] = []
        fresh: set[bytes] = set()
        want = min(self.population_size if not self.population else self.offspring_size,
                   self.space - len(self._asked))
        with private_global_random(self._pyrandom):
            tries = 0
            while len(batch) < want and tries < 50 * want:
                tries += 1
                m = self._child() if self.population else self._random_unseen(fresh)
                if m is None or m.key() in self._asked or m.key() in fresh:
                    continue
                fresh.add(m.key())
                batch.append(m)
            while len(batch) < want:  # operators stuck on seen masks: top up with random ones
                m = self._random_unseen(fresh)
                if m is None:
                    break
                fresh.add(m.key())
                batch.append(m)
        self._asked |= fresh
        if not batch or len(self._asked) >= self.space:
            self._done = True
        return batch

    def tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        fitness = np.asarray(fitness, dtype=float)
        self._record(masks, fitness)
        told = [Individual.of(m, f) for m, f in zip(masks, fitness)]
        old = sorted(self.population, key=lambda ind: ind.fitness.values[0])
        if not self.population:
            elites, rest = [], []
        else:
            elites, rest = old[: self.elite], old[self.elite:]
        # children replace the non-elite parents; when fewer were told (racing, budget cut)
        # the best remaining parents fill the population up
        children = sorted(told, key=lambda ind: ind.fitness.values[0])
        new = elites + children[: self.population_size - len(elites)]
        new += rest[: self.population_size - len(new)]
        if new:
            self.population = new
        self.generation += 1
