"""What every evaluator shares: the memo by (mask, fidelity) and the signed-fitness contract.

This is the one module that turns an objective's raw values (perplexity, KL, accuracy)
into fitness to minimise and back (:func:`to_minimize`, :func:`from_minimize`); searchers
see signed fitness, everything after a search reads raw values and :func:`better`.
``evaluate`` returns fitness to MINIMISE. A subclass supplies ``_score(masks, fidelity)``
for the masks not in the memo and returns raw objective values; this base class applies
the objective's direction and records failures (NaN/Inf) as the worst fitness.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Sequence

import numpy as np

from .genome import LayerMask

WORST = float("inf")


def to_minimize(raw, direction: str):
    """Raw value(s) as fitness where lower is better (arrays too)."""
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', not {direction!r}")
    if direction == "minimize":
        return raw
    return -raw if np.isscalar(raw) else -np.asarray(raw, dtype=float)


def from_minimize(signed, direction: str):
    """Fitness back to the objective's raw value(s): the inverse of :func:`to_minimize`."""
    return to_minimize(signed, direction)  # a negation is its own inverse


def better(a: float, b: float, direction: str) -> bool:
    """Whether raw value ``a`` beats ``b`` under ``direction`` (NaN never beats anything)."""
    return bool(to_minimize(a, direction) < to_minimize(b, direction))


class MemoEvaluator:
    """Memo by (mask, fidelity), the sign convention, and the study record around scoring.

    ``record`` (a :class:`dpopt.record.StudyRecord`, attached with :meth:`recording`) sees
    every evaluation: masks are claimed there before scoring, so a value computed by another
    process or an earlier run is read instead of recomputed, and every result is written
    back as a trial. ``memo`` and ``failures`` are written only here and by :meth:`seed_memo`.
    """

    direction: str = "minimize"
    metric: str = "value"  # the study's metric name: the objective's name
    fingerprint = None  # a dpopt.record.Fingerprint: what decides the values (None: a synthetic function)
    units = None  # the UnitSpace a mask's bits index (None: plain bits)
    problem = None  # the dpopt.Problem it was built from, whose recipe a worker rebuilds it with
    prepare_seconds: float | None = None  # building it: the objective's preparation, the fingerprint
    units_scored: int | None = None  # tokens (or questions) pushed through a head; None: not counted

    def __init__(self) -> None:
        self.memo: dict[tuple[bytes, int | None], float] = {}
        self.failures: dict[bytes, str] = {}
        self.n_scored = 0  # masks actually computed (memo misses)
        self.record = None  # the StudyRecord of the run in progress, if any
        self.costs: list = []  # dpopt.costs.Cost objects a multi-objective search minimises too

    def sign(self, raw: float) -> float:
        if not np.isfinite(raw):
            return WORST
        return to_minimize(raw, self.direction)

    def fidelities(self) -> list[int]:
        """The fidelities at which the objective's data can be cut (none for a plain function)."""
        return []

    def resolve_fidelity(self, fidelity: int | None) -> int | None:
        """The canonical memo key for a requested fidelity (subclasses: what is really scored)."""
        return fidelity

    def seed_memo(self, values: dict[tuple[bytes, int | None], float], failures: dict[bytes, str] | None = None) -> None:
        """Values known from elsewhere (a resumed study): later asks for them cost nothing."""
        self.memo.update(values)
        for key, reason in (failures or {}).items():
            self.failures.setdefault(key, reason)

    @contextlib.contextmanager
    def recording(self, record) -> Iterator[None]:
        """Record every evaluation in ``record`` for the duration, its earlier values seeding the memo."""
        if record is None:
            yield
            return
        self.seed_memo(*record.previous())
        previous, self.record = self.record, record
        try:
            yield
        finally:
            self.record = previous
            record.close()

    def evaluate(self, masks: Sequence[LayerMask], fidelity: int | None = None) -> np.ndarray:
        fid = self.resolve_fidelity(fidelity)
        unique = list(dict.fromkeys(masks))
        if self.record is None:
            todo, waiting = [m for m in unique if (m.key(), fid) not in self.memo], []
        else:
            todo, waiting = self.record.claim(unique, fid, self.memo, self.failures)
        self._compute(todo, fid)
        while waiting:  # another process is scoring these: take over only if it dies
            self._compute(self.record.wait(waiting, fid, self.memo, self.failures), fid)
            waiting = [m for m in waiting if (m.key(), fid) not in self.memo]
        return np.array([self.sign(self.memo[(m.key(), fid)]) for m in masks], dtype=float)

    def score_claimed(self, masks: Sequence[LayerMask], fidelity: int | None) -> None:
        """Score masks this process already holds in the record (a worker's take) in one batched
        call, completing their trials; interrupted, they go back to the queue."""
        self._compute(list(dict.fromkeys(masks)), fidelity)

    def _compute(self, todo: list[LayerMask], fid: int | None) -> None:
        if not todo:
            return
        start = time.perf_counter()
        try:
            raws = [float(r) for r in self._score(todo, fid)]
        except BaseException:
            if self.record is not None:  # back to the queue: a rerun or another worker scores them; a
                with contextlib.suppress(Exception):  # failing storage must not hide why scoring stopped
                    self.record.release(todo, fid)
            raise
        self.n_scored += len(todo)
        for m, r in zip(todo, raws):
            if not np.isfinite(r):
                self.failures.setdefault(m.key(), f"non-finite objective value ({r})")
            self.memo[(m.key(), fid)] = r
        scored = [m for m, r in zip(todo, raws) if np.isfinite(r)]
        for cost in self.costs:  # measured here, outside the record's lock; cached per mask
            cost.values(scored)
        if self.record is not None:
            self.record.complete(todo, fid, raws, self.failures, time.perf_counter() - start)

    def raw(self, mask: LayerMask, fidelity: int | None = None) -> float:
        """The objective's own value (e.g. perplexity) for a mask, computing it if needed."""
        self.evaluate([mask], fidelity)
        return self.memo[(mask.key(), self.resolve_fidelity(fidelity))]

    def _score(self, masks: Sequence[LayerMask], fidelity: int | None) -> Sequence[float]:
        raise NotImplementedError


class FunctionEvaluator(MemoEvaluator):
    """Scores masks with a plain function: synthetic objectives for tests and benchmarks."""

    def __init__(self, fn: Callable[[LayerMask], float], direction: str = "minimize", metric: str = "synthetic"):
        super().__init__()
        self.fn = fn
        self.direction = direction
        self.metric = metric

    def _score(self, masks, fidelity):
        return [self.fn(m) for m in masks]


def race(evaluator: MemoEvaluator, masks: Sequence[LayerMask],
         schedule: Sequence[tuple[int | None, int]],
         incumbents: Sequence[LayerMask] = (),
         observe: Callable[[list[LayerMask], np.ndarray, int | None], None] | None = None
         ) -> tuple[list[LayerMask], np.ndarray]:
    """EvoPress's multi-step selection: score all on few tokens, only the best on more.

    ``schedule`` is ``[(fidelity, survivors), ...]`` from cheapest to richest, e.g.
    ``[(2048, 8), (32768, 2)]``: all masks are scored at fidelity 2048, the best 8 go on to
    32768 and the best 2 of those are returned with their fitness at the last fidelity.
    ``incumbents`` (a GA's parents) join the pool only in the last stage, so they are
    compared with the survivors at the same fidelity and a raced generation cannot lose
    its best mask to a lucky cheap score; they count among the last stage's survivors.
    ``observe(masks, fitness, fidelity)`` sees every stage's scores, the losers' too.
    """
    pool = list(dict.fromkeys(masks))  # dedupe, keep order
    extra = [m for m in dict.fromkeys(incumbents) if m not in set(pool)]
    fit = np.zeros(0)
    for stage, (fidelity, survivors) in enumerate(schedule):
        if stage == len(schedule) - 1:
            pool = pool + [m for m in extra if m not in set(pool)]
        fit = evaluator.evaluate(pool, fidelity)
        if observe is not None:
            observe(list(pool), np.asarray(fit, dtype=float), fidelity)
        order = np.argsort(fit, kind="stable")[: max(1, survivors)]
        pool = [pool[i] for i in order]
        fit = fit[order]
    return pool, fit
