"""What every evaluator shares: the memo by (mask, fidelity) and the signed-fitness contract.

``evaluate`` returns fitness to MINIMISE. A subclass supplies ``_score(masks, fidelity)``
for the masks not in the memo and returns raw objective values; this base class applies
the objective's direction and records failures (NaN/Inf) as the worst fitness.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .genome import LayerMask

WORST = float("inf")


class MemoEvaluator:
    direction: str = "minimize"

    def __init__(self) -> None:
        self.memo: dict[tuple[bytes, int | None], float] = {}
        self.failures: dict[bytes, str] = {}
        self.n_scored = 0  # masks actually computed (memo misses)

    def sign(self, raw: float) -> float:
        if not np.isfinite(raw):
            return WORST
        return raw if self.direction == "minimize" else -raw

    def evaluate(self, masks: Sequence[LayerMask], fidelity: int | None = None) -> np.ndarray:
        todo: list[LayerMask] = []
        pending = set()
        for m in masks:
            k = (m.key(), fidelity)
            if k not in self.memo and k not in pending:
                pending.add(k)
                todo.append(m)
        if todo:
            raws = self._score(todo, fidelity)
            self.n_scored += len(todo)
            for m, r in zip(todo, raws):
                r = float(r)
                if not np.isfinite(r):
                    self.failures.setdefault(m.key(), f"non-finite objective value ({r})")
                self.memo[(m.key(), fidelity)] = r
        return np.array([self.sign(self.memo[(m.key(), fidelity)]) for m in masks], dtype=float)

    def raw(self, mask: LayerMask, fidelity: int | None = None) -> float:
        """The objective's own value (e.g. perplexity) for a mask, computing it if needed."""
        self.evaluate([mask], fidelity)
        return self.memo[(mask.key(), fidelity)]

    def _score(self, masks: Sequence[LayerMask], fidelity: int | None) -> Sequence[float]:
        raise NotImplementedError


class FunctionEvaluator(MemoEvaluator):
    """Scores masks with a plain function: synthetic objectives for tests and benchmarks."""

    def __init__(self, fn: Callable[[LayerMask], float], direction: str = "minimize"):
        super().__init__()
        self.fn = fn
        self.direction = direction

    def _score(self, masks, fidelity):
        return [self.fn(m) for m in masks]


def race(evaluator: MemoEvaluator, masks: Sequence[LayerMask],
         schedule: Sequence[tuple[int | None, int]],
         incumbents: Sequence[LayerMask] = ()) -> tuple[list[LayerMask], np.ndarray]:
    """EvoPress's multi-step selection: score all on few tokens, only the best on more.

    ``schedule`` is ``[(fidelity, survivors), ...]`` from cheapest to richest, e.g.
    ``[(2048, 8), (32768, 2)]``: all masks are scored at fidelity 2048, the best 8 go on to
    32768 and the best 2 of those are returned with their fitness at the last fidelity.
    ``incumbents`` (a GA's parents) join the pool only in the last stage, so they are
    compared with the survivors at the same fidelity and a raced generation cannot lose
    its best mask to a lucky cheap score; they count among the last stage's survivors.
    """
    pool = list(dict.fromkeys(masks))  # dedupe, keep order
    extra = [m for m in dict.fromkeys(incumbents) if m not in set(pool)]
    fit = np.zeros(0)
    for stage, (fidelity, survivors) in enumerate(schedule):
        if stage == len(schedule) - 1:
            pool = pool + [m for m in extra if m not in set(pool)]
        fit = evaluator.evaluate(pool, fidelity)
        order = np.argsort(fit, kind="stable")[: max(1, survivors)]
        pool = [pool[i] for i in order]
        fit = fit[order]
    return pool, fit
