"""(mu + lambda) evolutionary search over masks: EvoPress's algorithm on DEAP's Toolbox.

One generation, as DEAP's ``eaMuPlusLambda`` and EvoPress's ``evo_drop_search`` run it::

    offspring = [mutate(select(parents))  for _ in range(lambda)]   # one ask
    race offspring: score all on few tokens, the best few on more   # run_search + race
    re-score the parents beside the last stage's survivors           # incumbents()
    parents = best mu of (parents + survivors)                       # tell

Mutation is EvoPress's level-switch move: ``min(U{1,3}, U{1,3})`` swaps of a removed
block with a kept one (one swap 5/9 of the time, which matters near the optimum), so a
child always removes exactly ``k`` blocks. Crossover (DEAP's, then ``Constraint.repair``)
is available but off by default, as in EvoPress: near an optimum two good parents rarely
share the blocks a child needs, and a repaired cross is mostly a large random move.
Operators live in a ``deap.base.Toolbox`` so a variant can be tried by re-registering
``mate``/``mutate``/``select`` on ``searcher.toolbox``.

Two collaborators keep this module to the GA itself: ``init="single"`` runs
:class:`~dpopt.optim.single.SingleShot`'s probe stage, and the screening model is a
:class:`~dpopt.optim.surrogate.RidgeSurrogate`.

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
from ._common import (SearcherBase, check_float, check_int, level_switch_swaps, private_global_random, random_unseen,
                      space_size)
from .base import register_searcher
from .single import SingleShot
from .surrogate import RidgeSurrogate


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

    def mask(self) -> LayerMask:
        return LayerMask(self)


def parse_race(race) -> list[tuple[int | None, int]] | None:
    """``[(fidelity, survivors), ...]`` cheapest first; ``"auto"`` is resolved later by ``bind``."""
    if race is None or race == [] or race == () or race == "none":
        return None
    try:
        schedule = [(None if f is None else int(f), int(s)) for f, s in race]
    except (TypeError, ValueError):
        raise UserError(f"genetic option race must be 'auto', 'none' or a list of (fidelity, survivors) pairs, "
                        f"got {race!r}") from None
    for f, s in schedule:
        if s < 1:
            raise UserError(f"genetic option race: survivors must be >= 1, got {s}")
        if f is not None and f < 1:
            raise UserError(f"genetic option race: fidelity must be >= 1, got {f}")
    return schedule


MIN_RACE_FIDELITY = 512  # tokens (or questions) below which a first-stage score is too noisy to rank by


def auto_race(fidelities: Sequence[int], offspring: int, population: int) -> list[tuple[int | None, int]] | None:
    """The default race, from the objective's cumulative batch sizes (None: a single batch, no race).

    EvoPress scores its 16 offspring on 1/8 of the data and the 2 best on 1/2 of it. Here
    every child is scored on 1/16 of the data (at least ``MIN_RACE_FIDELITY`` tokens or
    questions, at least one batch), and the best ``max(2, population)`` on half of it, where
    the parents are re-scored beside them: a generation of 16 then costs about 1.9 full-data
    evaluations instead of EvoPress's 2.75. Below the floor a cheap score is mostly noise
    that misranks children, so there is no race. ``offspring`` is accepted so a rule may
    scale with it.
    """
    fids = [int(f) for f in fidelities]
    if len(fids) < 2:
        return None
    total = fids[-1]
    first = next((f for f in fids if f >= max(total / 16, MIN_RACE_FIDELITY)), total)
    if first >= total:
        return None
    last = next(f for f in fids if f >= total / 2)
    if last <= first:
        last = next(f for f in fids if f > first)
    return [(first, max(2, population)), (None if last >= total else last, population)]


INITS = ("random", "single")


@register_searcher("genetic")
class GeneticSearch(SearcherBase):
    """(mu + lambda) evolution with EvoPress's level-switch mutation and multi-fidelity racing.

    Options:
      ``population`` (2): parents kept between generations (mu); 1 is EvoPress's (1 + lambda).
      ``offspring`` (16): children asked per generation (lambda, one batch).
      ``initial`` (32): random masks scored first; the best ``population`` become the parents.
      ``init`` ("random" | "single"): "single" first scores every block removed alone, then
      draws the initial masks around the k least harmful (costs one evaluation per block).
      It starts the search near a good answer on small budgets; the default stays "random"
      because seeding from the ranking walks into greedy's trap (a group of blocks harmful
      alone, harmless together).
      ``bias`` (0.5): with "single", the share of mutation swaps drawn by that ranking (the
      block to remove with weight ``exp(-rank / k)``, the one to restore with its inverse)
      rather than uniformly; 0 is EvoPress's uniform move. Unused with "random".
      ``screen`` (0.75): the share of children chosen as the best-predicted of ``pool`` (16)
      candidate mutants, by a ridge fit of fitness on removed units over every mask told in
      this run (no evaluation spent); 0 is EvoPress's plain mutation. The rest stay
      unscreened, so moves a fit cannot credit (greedy's trap) still happen; screening most
      children spends the budget where the run has seen swaps do little harm.
      ``pairs`` (true): the screening fit also has a term per pair of units next to each
      other in depth, both removed: a run of removed blocks can cost less than its blocks
      apart, which no per-unit cost can express. False screens by per-unit costs alone.
      ``jump`` (true): once the fit exists, each generation's first child is the fit's own
      optimum when it is new: one evaluation a generation that can leave the parents' basin.
      ``screen=0`` with ``jump=false`` is EvoPress's blind mutation.
      ``crossover`` ("none" | "uniform" | "twopoint", default "none"), ``cxpb`` (0.5).
      ``tournsize`` (1): tournament size for choosing a parent (1: uniform, as EvoPress).
      ``max_swaps`` (3): mutation swaps are ``min(U{1,max}, U{1,max})``.
      ``race`` ("auto"): ``[(fidelity, survivors), ...]``, "none", or "auto": on whenever the
      objective has more than one batch and its first stage can score at least 512 tokens
      (or questions); see ``auto_race``. The last stage's survivors are
      the next parents: they are chosen among the surviving children AND the re-scored parents.
    A child identical to any mask asked before in this run is discarded and redrawn.
    """

    name = "genetic"

    def __init__(self, constraint: Constraint, seed: int = 0, population: int = 2, offspring: int = 16,
                 initial: int | None = 32, init: str = "random", crossover: str = "none", cxpb: float = 0.5,
                 tournsize: int = 1, max_swaps: int = 3, race="auto", bias: float = 0.5, screen: float = 0.75,
                 pool: int = 16, jump: bool = True, pairs: bool = True):
        super().__init__(constraint, seed)
        self.population_size = check_int("population", population)
        self.offspring_size = check_int("offspring", offspring)
        self.initial = max(check_int("initial", initial if initial is not None else population),
                           self.population_size)
        if init not in INITS:
            raise UserError(f"genetic option init must be one of {', '.join(INITS)}, got {init!r}")
        self.init = init
        self.cxpb = check_float("cxpb", cxpb, 0.0, 1.0)
        self.max_swaps = check_int("max_swaps", max_swaps)
        self.bias = check_float("bias", bias, 0.0, 1.0)
        self.screen = check_float("screen", screen, 0.0, 1.0)
        self.pool = check_int("pool", pool)
        if not isinstance(jump, bool):
            raise UserError(f"genetic option jump must be true or false, got {jump!r}")
        self.jump = jump
        if not isinstance(pairs, bool):
            raise UserError(f"genetic option pairs must be true or false, got {pairs!r}")
        self.pairs = pairs
        # every scored mask -> (fidelity, mask, fitness): what the surrogate fits
        self._seen: dict[bytes, tuple[float, LayerMask, float]] = {}
        self._model = RidgeSurrogate(pairs=pairs)
        self._fit_stale = False  # scores came in since the last fit; refitted when next used
        self._weights: np.ndarray | None = None  # per-unit draw weights, once the probes are told
        self._race_option = race if race == "auto" else parse_race(race)
        self._race: list[tuple[int | None, int]] | None = None if race == "auto" else self._race_option
        self._fidelities: list[int] = []

        self.toolbox = base.Toolbox()
        self.toolbox.register("select", tools.selTournament, tournsize=check_int("tournsize", tournsize))
        if crossover == "uniform":
            self.toolbox.register("mate", tools.cxUniform, indpb=0.5)
        elif crossover == "twopoint":
            self.toolbox.register("mate", tools.cxTwoPoint)
        elif crossover == "none":
            self.cxpb = 0.0
        else:
            raise UserError(f"genetic option crossover must be none, uniform or twopoint, got {crossover!r}")
        self.toolbox.register("mutate", self._swap_mutate)

        self.space = space_size(constraint)
        self._asked: set[bytes] = set()
        self.population: list[Individual] = []
        self.generation = 0
        self._single = SingleShot(constraint, seed) if init == "single" else None  # its probe stage
        self._stage = "probe" if init == "single" else "initial"  # -> "initial" -> "evolve"
        self._pyrandom = {"seed": self.seed}

    # --- racing ---------------------------------------------------------------------------
    def bind(self, fidelities: list[int]) -> None:
        self._fidelities = [int(f) for f in fidelities]
        if self._race_option == "auto":
            self._race = auto_race(self._fidelities, self.offspring_size, self.population_size)

    @property
    def race_schedule(self) -> list[tuple[int | None, int]] | None:
        """This batch's race: generations use the full schedule; the first batches only its first stage.

        The initial masks (and single-removal probes) are ranked on the cheap fidelity alone,
        as EvoPress does; the parents they yield are re-scored in the next generation's last stage.
        """
        if not self._race:
            return None
        if self._stage == "evolve":
            return self._race
        first = self._race[0][0]
        if self._stage == "probe":
            return [(first, len(self.constraint.removable))]
        return [(first, self.population_size)]

    def incumbents(self) -> list[LayerMask]:
        return [ind.mask() for ind in self.population] if self._stage == "evolve" else []

    # --- operators ------------------------------------------------------------------------
    def _swap_mutate(self, ind: Individual) -> tuple[Individual]:
        n_swaps = level_switch_swaps(self.rng, self.max_swaps)
        if self._weights is None or self.bias == 0:
            ind[:] = self.constraint.swap_mutation(LayerMask(ind), self.rng, n_swaps).bits.tolist()
        else:
            ind[:] = self._biased_swaps(np.array(ind, dtype=bool), n_swaps).tolist()
        return (ind,)

    def _biased_swaps(self, bits: np.ndarray, n_swaps: int) -> np.ndarray:
        """Level-switch swaps drawn, with probability ``bias``, by single-removal rank instead of uniformly:
        the block to remove with weight ``exp(-rank / k)``, the one to restore with its inverse.

        A block that is very harmful alone rarely belongs in a good mask, so a uniform draw
        mostly proposes children that are clearly worse; the uniform share keeps every swap
        possible (blocks that only help together, greedy's trap, stay reachable).
        """
        removable = np.array(self.constraint.removable)
        for _ in range(n_swaps):
            kept = removable[bits[removable]]
            removed = np.flatnonzero(~bits)
            if len(kept) == 0 or len(removed) == 0:
                break
            if self.rng.random() < self.bias:
                w = self._weights[kept]
                i = self.rng.choice(kept, p=w / w.sum())
                w = 1.0 / self._weights[removed]  # restore the block most harmful alone first
                j = self.rng.choice(removed, p=w / w.sum())
            else:
                i, j = self.rng.choice(kept), self.rng.choice(removed)
            bits[i], bits[j] = False, True
        return bits

    def _rank_weights(self) -> np.ndarray:
        """``exp(-rank / k)`` per unit from the single-removal probes (rank 0: least harmful alone)."""
        removable = np.array(self.constraint.removable)
        harm = np.array([self._single.harm.get(int(i), np.inf) for i in removable])
        order = removable[np.lexsort((removable, harm))]
        weights = np.zeros(self.constraint.n_units)
        weights[order] = np.exp(-np.arange(len(order)) / max(1, self.constraint.k))
        return weights

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

    def _screened_child(self, fresh: set[bytes]) -> LayerMask:
        """A child, chosen with probability ``screen`` as the best-predicted of ``pool`` unseen candidates.

        The prediction is a ridge fit of fitness on which units (and, with ``pairs``, which
        neighbouring pairs) are removed, over every mask scored in this run, so it costs no
        evaluation. Near an optimum most of a parent's swaps make it worse; screening spends
        the evaluations on the swaps the run has so far seen do little harm. The pair terms
        let the fit credit the swap that completes a run of removed blocks, which per-unit
        costs rank low when the run's blocks are harmful apart. The unscreened share keeps
        every move possible (blocks that only help together, greedy's trap, get no credit).
        """
        model = self.surrogate
        if model is None or self.rng.random() >= self.screen:
            return self._child()
        best, best_pred = None, np.inf
        for _ in range(self.pool):
            m = self._child()
            if m.key() in self._asked or m.key() in fresh:
                continue
            pred = float(model.predict([m])[0])
            if pred < best_pred:
                best, best_pred = m, pred
        return best if best is not None else self._child()

    def observe(self, masks: Sequence[LayerMask], fitness: np.ndarray, fidelity: int | None) -> None:
        """A raced batch's scores, losers too: under racing ``tell`` hears 2 masks a generation,
        too few to fit 30 units, while the cheap stage scores all 16 (same scale, more noise)."""
        if self._stage != "probe":  # single removals are not in the space the fit ranks
            self._learn(masks, fitness, fidelity)

    def _learn(self, masks: Sequence[LayerMask], fitness: np.ndarray, fidelity: int | None) -> None:
        if self.screen == 0 and not self.jump:  # EvoPress's blind search: no fit to keep
            return
        level = np.inf if fidelity is None else float(fidelity)
        for m, f in zip(masks, np.asarray(fitness, dtype=float)):
            old = self._seen.get(m.key())
            if np.isfinite(f) and (old is None or level >= old[0]):  # a richer score replaces a cheaper one
                self._seen[m.key()] = (level, m, float(f))
                self._fit_stale = True

    @property
    def surrogate(self) -> RidgeSurrogate | None:
        """The surrogate fitted on every mask scored so far; None until there are enough.

        Refitted on first use after new scores, so a raced batch (observed at every stage,
        then told) costs one fit, not one per stage; any two reads between scores agree.
        """
        if self._fit_stale:
            self._fit_stale = False
            if len(self._seen) >= max(8, len(self.constraint.removable) // 2):
                seen = list(self._seen.values())
                self._model.fit([m for _, m, _ in seen], [f for _, _, f in seen])
        return self._model if self._model.fitted else None

    def _seeded(self) -> LayerMask:
        """A mask near the single-removal ranking: its k least harmful blocks, then a mutation."""
        ranked = self._single.ranked()
        if ranked.key() not in self._asked:
            return ranked
        (child,) = self._swap_mutate(Individual.of(ranked))
        return child.mask()

    def _random_unseen(self, fresh: set[bytes]) -> LayerMask | None:
        return random_unseen(self.constraint, self.rng, self._asked, fresh)

    # --- protocol -------------------------------------------------------------------------
    def _ask(self) -> list[LayerMask]:
        if self._stage == "probe":
            return self._single.ask()
        batch: list[LayerMask] = []
        fresh: set[bytes] = set()
        initial = self._stage == "initial"
        want = min(self.initial if initial else self.offspring_size, self.space - len(self._asked))
        with private_global_random(self._pyrandom):
            tries = 0
            model = None if initial or not self.jump else self.surrogate
            if model is not None:
                m = self.constraint.from_scores(model.unit_costs)  # the fit's own optimum: a jump between basins
                if m.key() not in self._asked:
                    fresh.add(m.key())
                    batch.append(m)
            while len(batch) < want and tries < 50 * want:
                tries += 1
                if not initial:
                    m = self._screened_child(fresh)
                elif self.init == "single":
                    m = self._seeded()
                else:
                    m = self._random_unseen(fresh)
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

    def _tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        """Plus-selection: the next parents are the best ``population`` of parents and told children.

        When the batch was raced, the parents were re-scored in its last stage and every
        one that is not among the told winners lost to them; such parents come back only
        if fewer winners than ``population`` were told.
        """
        if self._stage == "probe":
            self._single.tell(masks, fitness)
            if self._single.probed:
                self._stage = "initial"
                self._weights = self._rank_weights()
            return
        if not len(masks):
            return
        self._learn(masks, fitness, None if not self.race_schedule else self.race_schedule[-1][0])
        told = {m.key(): Individual.of(m, f) for m, f in zip(masks, fitness)}
        by_fit = lambda ind: ind.fitness.values[0]  # noqa: E731
        parents = [p for p in self.population if p.mask().key() not in told]
        if self._stage == "evolve" and self.race_schedule:
            ranked = sorted(told.values(), key=by_fit) + sorted(parents, key=by_fit)
        else:
            ranked = sorted(list(told.values()) + parents, key=by_fit)
        self.population = ranked[: self.population_size]
        if self._stage == "initial":
            self._stage = "evolve"
        else:
            self.generation += 1
