"""The Searcher protocol and ``run_search``, the only search loop in dpopt.

A searcher proposes whole batches (a greedy step, a GA generation) and never touches the
model; the evaluator scores a batch in one call. Fitness handed to ``tell`` is always to be
MINIMISED (objectives that maximise are negated by the evaluator).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..genome import Constraint, LayerMask
from ..errors import UserError
from ..fitness import race
from ..registry import Registry


@runtime_checkable
class Searcher(Protocol):
    """What ``run_search`` relies on; :class:`dpopt.optim.SearcherBase` supplies all but ask/tell.

    ``constraint``: the space; only masks valid under it can be a run's answer.
    ``race_schedule``: ``[(fidelity, survivors), ...]`` to score each batch by multi-fidelity
    racing (only the survivors are told), or None to score it in full (SearcherBase: None).
    ``needs_block_stats``: the caller passes ``stats=evaluator.block_stats()`` to the
    constructor (SearcherBase: False).
    ``multi_objective``: ``tell`` takes one row per mask, ``[objective, cost, ...]``, so the
    searcher can run with ``--minimize`` (SearcherBase: False).
    ``objective_blind`` / ``one_shot``: read by compare/study to report the searcher apart
    (SearcherBase: False; see there).
    ``bind``/``incumbents``/``observe``: see below (SearcherBase: no-op / none / no-op).
    """

    name: str
    constraint: Constraint
    race_schedule: Sequence[tuple[int | None, int]] | None
    needs_block_stats: bool
    multi_objective: bool

    def bind(self, fidelities: list[int]) -> None:
        """Called once before the first ask with the evaluator's cumulative batch sizes."""
        ...

    def incumbents(self) -> list[LayerMask]:
        """Masks re-scored beside a race's last-stage survivors (a GA's parents)."""
        ...

    def observe(self, masks: Sequence[LayerMask], fitness: np.ndarray, fidelity: int | None) -> None:
        """Every stage's scores of a raced batch, losers too (``tell`` hears only the survivors)."""
        ...

    def ask(self) -> list[LayerMask]: ...

    def tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None: ...

    @property
    def done(self) -> bool: ...


SEARCHERS: Registry[Callable[..., Searcher]] = Registry("searcher")
register_searcher = SEARCHERS.register


@dataclass
class Budget:
    """Stop after ``evaluations`` distinct masks scored or ``seconds`` elapsed (either may be None)."""

    evaluations: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.evaluations is not None and self.evaluations <= 0:
            raise UserError(f"--budget must be a positive number of evaluations, got {self.evaluations}")
        if self.seconds is not None and self.seconds <= 0:
            raise UserError(f"--time-budget must be positive seconds, got {self.seconds}")


@dataclass
class SearchOutcome:
    """What the loop hands back: the best mask with its SIGNED fitness (see :mod:`dpopt.fitness`)."""

    best: LayerMask
    fitness: float  # signed, minimised
    evaluations: int
    wall_seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (evaluation count, best so far)
    extra: dict[str, Any] = field(default_factory=dict)


STALE_BATCHES = 50  # batches in a row of only masks seen before, after which a search is stopped


def run_search(searcher: Searcher, evaluator, budget: Budget, record=None,
               progress: Callable[[int, float], None] | None = None) -> SearchOutcome:
    """Ask a batch, evaluate it in one call, tell — until the searcher or budget is done.

    The budget counts distinct masks asked (memo hits count too: a searcher's budget is what
    it asked, whatever the memo saved). When the budget cannot cover a whole batch, the batch
    is cut to what is left and ``tell`` gets that prefix. A searcher that keeps proposing only
    masks seen before is stopped after ``STALE_BATCHES`` so the loop cannot spin forever.
    Recording is the evaluator's (every evaluation, raced or not, is a trial); ``record`` here
    only learns the batch number, so each trial says which generation asked for it.

    With costs on the evaluator (``--minimize``), a multi-objective searcher is told one row
    per mask, ``[fitness, cost, ...]``, and the result's ``extra["front"]`` holds the Pareto
    front of every valid mask scored in full (``extra["evaluated"]``: all of them).
    """
    start = time.perf_counter()
    seen: set[bytes] = set()  # every mask asked so far: what the budget counts
    best = Incumbent(searcher.constraint)
    pareto = ParetoArchive.for_search(searcher, evaluator)
    history: list[tuple[int, float]] = []
    interrupted = timed_out = False
    batch_no = stale_batches = 0
    searcher.bind(list(evaluator.fidelities()))
    try:
        while not searcher.done:
            if budget.seconds is not None and time.perf_counter() - start >= budget.seconds:
                timed_out = True
                break
            left = None if budget.evaluations is None else budget.evaluations - len(seen)
            if left is not None and left <= 0:
                break
            masks = cut_to_budget(list(searcher.ask()), seen, left)
            if not masks:
                break
            n_before = len(seen)
            seen.update(m.key() for m in masks)
            if record is not None:
                record.begin_batch(batch_no)
            batch_no += 1
            masks, fitness, fidelity = score_batch(searcher, evaluator, masks)
            best.rescore(evaluator, fidelity)
            best.update(masks, fitness)
            history.append((len(seen), best.fitness))
            searcher.tell(masks, fitness if pareto is None else pareto.rows(masks, fitness, fidelity))
            if progress is not None:
                progress(len(seen), best.fitness)
            stale_batches = 0 if len(seen) > n_before else stale_batches + 1
            if stale_batches >= STALE_BATCHES:
                break
    except KeyboardInterrupt:  # keep what was found; the caller reports it and exits
        interrupted = True
    if best.mask is None:
        if interrupted:  # no answer, so no result.json: the caller exits 130; what was scored stays recorded
            raise KeyboardInterrupt(f"interrupted before {searcher.name} scored a mask with "
                                    f"{searcher.constraint.describe()}")
        raise _no_answer(searcher, evaluator, budget, best.valid_told, len(seen), timed_out)
    extra: dict[str, Any] = {"interrupted": True} if interrupted else {}
    if pareto is not None:
        extra.update(pareto.extra())
    return SearchOutcome(best.mask, best.fitness, len(seen), time.perf_counter() - start, history, extra=extra)


def cut_to_budget(masks: list[LayerMask], seen: set[bytes], left: int | None) -> list[LayerMask]:
    """The batch's prefix whose masks not ``seen`` before number at most ``left`` (None: all of it)."""
    if left is None:
        return masks
    cut, fresh = [], set()
    for m in masks:
        if m.key() not in seen and m.key() not in fresh:
            if len(fresh) >= left:
                break
            fresh.add(m.key())
        cut.append(m)
    return cut


def score_batch(searcher: Searcher, evaluator, masks: list[LayerMask]
                ) -> tuple[list[LayerMask], np.ndarray, int | None]:
    """(masks to tell, their fitness, the fidelity it was scored at; None: in full).

    With a race schedule (read after every ask: a searcher may change it) only the
    survivors are told, at the last stage's fidelity, where the incumbents (a GA's parents)
    are re-scored beside them; ``observe`` sees every stage's scores.
    """
    schedule = searcher.race_schedule
    if schedule:
        masks, fitness = race(evaluator, masks, schedule, incumbents=searcher.incumbents(),
                              observe=searcher.observe)
        return masks, fitness, schedule[-1][0]
    return masks, np.asarray(evaluator.evaluate(masks), dtype=float), None


class Incumbent:
    """The run's answer so far: the best valid mask told, and the fidelity its value is at.

    Greedy and beam pass through masks with fewer than ``k`` removed; only valid masks can
    be the answer. Values at different fidelities do not compare, so before a batch scored
    at another fidelity is weighed, the best is re-scored there (a memo hit when it was
    raced as an incumbent).
    """

    def __init__(self, constraint: Constraint):
        self.constraint = constraint
        self.mask: LayerMask | None = None
        self.fitness = float("inf")
        self.fidelity: int | None = None
        self.valid_told = 0  # valid masks told, to tell "none scored" from "all failed"

    def rescore(self, evaluator, fidelity: int | None) -> None:
        if self.mask is not None and fidelity != self.fidelity:
            self.fitness = float(np.asarray(evaluator.evaluate([self.mask], fidelity), dtype=float)[0])
        self.fidelity = fidelity

    def update(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        for m, f in zip(masks, fitness):
            if self.constraint.is_valid(m):
                self.valid_told += 1
                if f < self.fitness:
                    self.fitness, self.mask = float(f), m


class ParetoArchive:
    """With costs on the evaluator (``--minimize``): each mask's row and every valid mask scored in full."""

    def __init__(self, costs: Sequence, constraint: Constraint):
        self.costs = list(costs)
        self.constraint = constraint
        self.scored: dict[bytes, tuple[LayerMask, np.ndarray]] = {}

    @classmethod
    def for_search(cls, searcher: Searcher, evaluator) -> "ParetoArchive | None":
        """None without costs; a UserError when the searcher optimises one number."""
        if not evaluator.costs:
            return None
        if not searcher.multi_objective:
            raise UserError(f"--minimize needs a multi-objective searcher (nsga2, random); {searcher.name} "
                            "optimises one number")
        return cls(evaluator.costs, searcher.constraint)

    def rows(self, masks: Sequence[LayerMask], fitness: np.ndarray, fidelity: int | None) -> np.ndarray:
        """``[fitness, cost, ...]`` per mask; kept when scored in full (a raced stage's values are not final)."""
        rows = np.column_stack([np.asarray(fitness, dtype=float)]
                               + [np.asarray(c.values(masks), dtype=float) for c in self.costs])
        if fidelity is None:
            self.scored.update((m.key(), (m, r)) for m, r in zip(masks, rows) if self.constraint.is_valid(m))
        return rows

    def extra(self) -> dict[str, Any]:
        from ..costs.pareto import front_points

        evaluated = list(self.scored.values())
        return {"evaluated": evaluated, "front": front_points(evaluated)}


def _no_answer(searcher: Searcher, evaluator, budget: Budget, valid_told: int, n_seen: int,
               timed_out: bool) -> UserError:
    """Why a run ended without a valid mask, in the user's terms."""
    space = searcher.constraint.describe()
    if valid_told:
        reasons = sorted(set(evaluator.failures.values()))
        return UserError(f"every one of the {valid_told} masks with {space} failed to score "
                         f"({reasons[0] if reasons else 'non-finite value'}); check the objective and data")
    if timed_out:
        return UserError(f"the time budget of {budget.seconds:g} s ran out before {searcher.name} reached a mask "
                         f"with {space}; raise --time-budget")
    if n_seen:
        return UserError(f"the budget of {n_seen} evaluations ran out before {searcher.name} reached a mask "
                         f"with {space}; raise --budget")
    return UserError(f"searcher {searcher.name!r} proposed no mask")
