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
    racing (only the survivors are told), or None to score it in full.
    ``needs_block_stats``: the caller passes ``stats=evaluator.block_stats()`` to the constructor.
    ``bind``/``incumbents``: see below (SearcherBase: no-op / none).
    """

    name: str
    constraint: Constraint
    race_schedule: Sequence[tuple[int | None, int]] | None
    needs_block_stats: bool

    def bind(self, fidelities: list[int]) -> None:
        """Called once before the first ask with the evaluator's cumulative batch sizes."""
        ...

    def incumbents(self) -> list[LayerMask]:
        """Masks re-scored beside a race's last-stage survivors (a GA's parents)."""
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


def run_search(searcher: Searcher, evaluator, budget: Budget, record=None,
               progress: Callable[[int, float], None] | None = None) -> SearchOutcome:
    """Ask a batch, evaluate it in one call, tell — until the searcher or budget is done.

    The budget counts distinct masks asked (memo hits count too: a searcher's budget is what
    it asked, whatever the memo saved). When the budget cannot cover a whole batch, the batch
    is cut to what is left and ``tell`` gets that prefix. A searcher that keeps proposing only
    masks seen before is stopped after a while so the loop cannot spin forever. Recording is
    the evaluator's (every evaluation, raced or not, is a trial); ``record`` here only learns
    the batch number, so each trial says which generation asked for it.

    With costs on the evaluator (``--minimize``), a multi-objective searcher is told one row
    per mask, ``[fitness, cost, ...]``, and the result's ``extra["front"]`` holds the Pareto
    front of every valid mask scored in full (``extra["evaluated"]``: all of them).
    """
    start = time.perf_counter()
    seen: set[bytes] = set()  # every mask asked so far: what the budget counts
    best_mask: LayerMask | None = None
    best_fit = float("inf")
    best_fidelity: int | None = None  # the fidelity best_fit was scored at (a race's last stage)
    history: list[tuple[int, float]] = []
    stale_batches = 0
    # greedy/beam pass through masks with fewer than k removed: only valid masks can be the answer
    constraint = searcher.constraint
    interrupted = timed_out = False
    valid_told = 0
    batch_no = 0
    costs = list(getattr(evaluator, "costs", None) or [])
    if costs and not getattr(searcher, "multi_objective", False):
        raise UserError(f"--minimize needs a multi-objective searcher (nsga2, random); {searcher.name} "
                        "optimises one number")
    scored: dict[bytes, tuple[LayerMask, np.ndarray]] = {}  # with costs: valid masks scored in full -> row
    searcher.bind(list(evaluator.fidelities()))
    try:
        while not searcher.done:
            if budget.seconds is not None and time.perf_counter() - start >= budget.seconds:
                timed_out = True
                break
            left = None if budget.evaluations is None else budget.evaluations - len(seen)
            if left is not None and left <= 0:
                break
            masks = list(searcher.ask())
            if not masks:
                break
            if left is not None:
                # count only masks not scored before; keep the batch up to the remaining budget
                cut, fresh = [], set()
                for m in masks:
                    if m.key() not in seen and m.key() not in fresh:
                        if len(fresh) >= left:
                            break
                        fresh.add(m.key())
                    cut.append(m)
                masks = cut
            n_before = len(seen)
            seen.update(m.key() for m in masks)
            n_new = len(seen) - n_before
            if record is not None:
                record.begin_batch(batch_no)
            batch_no += 1
            schedule = searcher.race_schedule  # read after every ask: a searcher may change it
            if schedule:
                # multi-fidelity selection: only the survivors are told, at the last stage's
                # fidelity, where the incumbents (a GA's parents) are re-scored beside them;
                # a searcher with ``observe`` (optional) also sees every stage's scores
                masks, fitness = race(evaluator, masks, schedule, incumbents=searcher.incumbents(),
                                      observe=getattr(searcher, "observe", None))
                fidelity = schedule[-1][0]
            else:
                fidelity = None
                fitness = np.asarray(evaluator.evaluate(masks), dtype=float)
            if best_mask is not None and fidelity != best_fidelity:
                # values at different fidelities do not compare: re-score the best where the
                # new ones were scored (a memo hit when it was raced as an incumbent)
                best_fit = float(np.asarray(evaluator.evaluate([best_mask], fidelity), dtype=float)[0])
            best_fidelity = fidelity
            for m, f in zip(masks, fitness):
                if constraint.is_valid(m):
                    valid_told += 1
                    if f < best_fit:
                        best_fit, best_mask = float(f), m
            history.append((len(seen), best_fit))
            if costs:
                rows = np.column_stack([np.asarray(fitness, dtype=float)]
                                       + [np.asarray(c.values(masks), dtype=float) for c in costs])
                if fidelity is None:
                    scored.update((m.key(), (m, r)) for m, r in zip(masks, rows) if constraint.is_valid(m))
                searcher.tell(masks, rows)
            else:
                searcher.tell(masks, fitness)
            if progress is not None:
                progress(len(seen), best_fit)
            stale_batches = 0 if n_new else stale_batches + 1
            if stale_batches >= 50:
                break
    except KeyboardInterrupt:  # keep what was found; the caller reports it and exits
        interrupted = True
    if best_mask is None:
        if interrupted:
            raise KeyboardInterrupt
        if valid_told:
            reasons = sorted(set(evaluator.failures.values()))
            raise UserError(f"every one of the {valid_told} masks with {_space(constraint)} failed to score "
                            f"({reasons[0] if reasons else 'non-finite value'}); check the objective and data")
        if timed_out:
            raise UserError(f"the time budget of {budget.seconds:g} s ran out before {searcher.name} reached a mask "
                            f"with {_space(constraint)}; raise --time-budget")
        if len(seen):
            raise UserError(f"the budget of {len(seen)} evaluations ran out before {searcher.name} reached a mask "
                            f"with {_space(constraint)}; raise --budget")
        raise UserError(f"searcher {searcher.name!r} proposed no mask")
    extra: dict[str, Any] = {"interrupted": True} if interrupted else {}
    if costs:
        from ..costs.pareto import front_points

        extra["evaluated"] = list(scored.values())
        extra["front"] = front_points(extra["evaluated"])
    return SearchOutcome(best_mask, best_fit, len(seen), time.perf_counter() - start, history, extra=extra)


def _space(constraint) -> str:
    """``6 blocks removed``, ``4 to 10 sub-layer units removed``, ... (a user constraint may lack describe)."""
    if hasattr(constraint, "describe"):
        return constraint.describe()
    return f"{constraint.k} {getattr(constraint, 'what', 'blocks')} removed"
