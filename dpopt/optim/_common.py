"""Plumbing shared by the bundled searchers: the base class, option checks, private RNG state.

Kept out of ``base.py`` because it is implementation help for the bundled searchers, not
part of the protocol a user-supplied searcher has to follow.
"""
from __future__ import annotations

import contextlib
import math
import random
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..genome import Constraint, LayerMask


class SearcherBase:
    """The bookkeeping every searcher shares, done once here (nevergrad's ``Optimizer``).

    ``ask``/``tell`` are final in spirit: ``ask`` returns nothing once the searcher is done,
    ``tell`` records every told mask in ``archive`` and keeps ``best`` and the counters, then
    each hands over to the subclass's ``_ask``/``_tell``, which hold only the algorithm.

    ``best`` ignores masks that break the constraint (greedy's intermediate steps remove
    fewer than ``k`` blocks and would otherwise always look best). With one row per mask
    (``multi_objective``), ``best`` and ``archive`` keep the first column, the objective.
    """

    name = "base"
    # multi-fidelity racing of each batch: ``[(fidelity, survivors), ...]`` cheapest first;
    # ``run_search`` reads it after every ask, so a searcher may change it between batches
    race_schedule: list[tuple[int | None, int]] | None = None
    needs_block_stats = False
    # True: ``tell`` takes one row per mask, [objective, cost, ...] (``--minimize``); see nsga2
    multi_objective = False
    # the masks asked never depend on the values told (random draws, a ranking of the dense
    # model's hidden states, enumeration): across objectives such a searcher agrees with
    # itself by construction, so a study reports it apart from the searchers that search
    objective_blind = False
    # picks its answer without searching (a ranking, a fixed rule): a report draws it as one
    # reference point with its gap, not as a curve
    one_shot = False

    def __init__(self, constraint: Constraint, seed: int = 0):
        if not isinstance(constraint, Constraint):
            raise TypeError(f"expected a Constraint, got {type(constraint).__name__}")
        self.constraint = constraint
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.archive: dict[bytes, float] = {}  # mask key -> the objective last told for it
        self.num_ask = 0  # masks asked
        self.num_tell = 0  # masks told
        self.improved = False  # the latest tell lowered ``best``
        self._best_mask: LayerMask | None = None
        self._best_fit = float("inf")
        self._done = False

    # --- the protocol: bookkeeping here, the algorithm in _ask/_tell ------------------------
    def ask(self) -> list[LayerMask]:
        if self._done:
            return []
        batch = list(self._ask())
        self.num_ask += len(batch)
        return batch

    def tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        fitness = np.asarray(fitness, dtype=float)
        self._record(masks, fitness if fitness.ndim == 1 else fitness[:, 0])
        self._tell(masks, fitness)

    def _ask(self) -> list[LayerMask]:
        raise NotImplementedError(f"{type(self).__name__} must implement _ask")

    def _tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        """Learn from a told batch (``fitness`` a float array, one row per mask when multi-objective)."""

    @property
    def done(self) -> bool:
        return self._done

    def bind(self, fidelities: list[int]) -> None:
        """Told once, before the first ask, the objective's cumulative batch sizes ([] if unknown).

        A searcher that races derives its default schedule from them; others ignore them.
        """

    def incumbents(self) -> list[LayerMask]:
        """Masks re-scored beside the survivors in a race's last stage (a GA's parents)."""
        return []

    def observe(self, masks: Sequence[LayerMask], fitness: np.ndarray, fidelity: int | None) -> None:
        """Every score of a raced batch, at each stage's fidelity (losers too); ignored by default.

        ``tell`` hears only the survivors, at the last stage's fidelity, so selection never
        compares fidelities; a searcher that learns a model of the landscape may use the rest.
        """

    @property
    def best(self) -> tuple[LayerMask | None, float]:
        return self._best_mask, self._best_fit

    def _record(self, masks: Sequence[LayerMask], objective: np.ndarray) -> None:
        self.improved = False
        for m, f in zip(masks, objective):
            self.archive[m.key()] = float(f)
            if f < self._best_fit and self.constraint.is_valid(m):
                self._best_mask, self._best_fit = m, float(f)
                self.improved = True
        self.num_tell += len(masks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.constraint!r}, seed={self.seed})"


class Candidates:
    """A sampler's candidates for one batch (Optuna trials, nevergrad points), each with its mask.

    Many of a sampler's points decode to one mask. A point whose mask was told before is
    answered at once from the searcher's archive (the sampler still learns from it) and is
    never scored again; the others wait for ``settle``, which matches them to the told
    values by mask, not position: a cut batch tells a prefix, and several points may decode
    to one mask (each gets its value).
    """

    def __init__(self, archive: Mapping[bytes, float], answer: Callable[[object, float], None]):
        self._archive, self._answer = archive, answer
        self._waiting: list[tuple[object, LayerMask]] = []

    def offer(self, candidate, mask: LayerMask) -> bool:
        """False (and the candidate answered) when ``mask`` was told before; True: it waits."""
        known = self._archive.get(mask.key())
        if known is not None:
            self._answer(candidate, known)
            return False
        self._waiting.append((candidate, mask))
        return True

    def settle(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> list[tuple[object, float | None]]:
        """Every waiting candidate with its mask's told value (None: not told), and none waits after."""
        told = {m.key(): float(f) for m, f in zip(masks, fitness)}
        out = [(c, told.get(m.key())) for c, m in self._waiting]
        self._waiting = []
        return out


def random_unseen(constraint: Constraint, rng: np.random.Generator, *seen: set[bytes],
                  tries: int = 200) -> LayerMask | None:
    """A random valid mask in none of the ``seen`` key sets; None when every draw was seen."""
    for _ in range(tries):
        m = constraint.random_mask(rng)
        if all(m.key() not in s for s in seen):
            return m
    return None


def level_switch_swaps(rng: np.random.Generator, max_swaps: int = 3) -> int:
    """EvoPress's mutation size: the smaller of two uniform draws from 1..max_swaps."""
    return int(min(rng.integers(1, max_swaps + 1), rng.integers(1, max_swaps + 1)))


def space_size(constraint: Constraint) -> float:
    """How many distinct masks the constraint allows (C(removable, k) for exactly k); a
    parameter budget leaves the count unknown, which reads as unbounded."""
    size = constraint.size()
    return math.inf if size is None else size


def check_int(name: str, value, minimum: int = 1, allow_none: bool = False) -> int | None:
    """Options come from the CLI as user input: a bad one is a UserError, not a traceback."""
    if value is None and allow_none:
        return None
    try:
        ivalue = int(value)
    except (TypeError, ValueError):
        raise UserError(f"searcher option {name} must be an integer, got {value!r}") from None
    if ivalue != value and not (isinstance(value, str) and str(ivalue) == value.strip()):
        raise UserError(f"searcher option {name} must be an integer, got {value!r}")
    if ivalue < minimum:
        raise UserError(f"searcher option {name} must be >= {minimum}, got {value!r}")
    return ivalue


def check_float(name: str, value, low: float | None = None, high: float | None = None,
                open_low: bool = False) -> float:
    try:
        fvalue = float(value)
    except (TypeError, ValueError):
        raise UserError(f"searcher option {name} must be a number, got {value!r}") from None
    if not math.isfinite(fvalue) or (low is not None and (fvalue < low or (open_low and fvalue == low))) \
            or (high is not None and fvalue > high):
        bounds = f"{'(' if open_low else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise UserError(f"searcher option {name} must be in {bounds}, got {value!r}")
    return fvalue


@contextlib.contextmanager
def private_global_random(holder: dict) -> Iterator[None]:
    """Run library code that draws from the *global* ``random``/``np.random`` on a private stream.

    DEAP's stock operators use ``random`` and the ``cma`` package uses ``np.random``; swapping
    a per-searcher state in and out makes them reproducible per seed without disturbing (or
    being disturbed by) anyone else using the global generators.
    """
    saved_py, saved_np = random.getstate(), np.random.get_state()
    try:
        if "py" not in holder:
            random.seed(holder["seed"])
            np.random.seed(holder["seed"] % (2**32))
        else:
            random.setstate(holder["py"])
            np.random.set_state(holder["np"])
        yield
    finally:
        holder["py"], holder["np"] = random.getstate(), np.random.get_state()
        random.setstate(saved_py)
        np.random.set_state(saved_np)
