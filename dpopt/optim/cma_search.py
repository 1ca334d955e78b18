"""CMA-ES over a continuous score per removable block; a mask keeps the ``n - k`` top scores.

Decoding with ``Constraint.from_scores`` lands on exactly ``k`` removed without repair,
so the evolution strategy sees an ordinary (piecewise constant) black-box function.
Several score vectors decode to one mask; the evaluator's memo makes repeats free.
Uses the ``cma`` package directly (nevergrad's CMA wraps the same code); its sampling
draws from the global ``np.random``, so that state is kept private per searcher.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from ..genome import Constraint, LayerMask
from ._common import SearcherBase, check_float, check_int, private_global_random
from .base import register_searcher


def _cma():
    """The ``cma`` package, imported on first use: it pulls in matplotlib (~40 MB resident),
    which a run of any other searcher should not carry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cma warns at import when matplotlib is missing
        import cma
    return cma


@register_searcher("cma")
class CMASearch(SearcherBase):
    """CMA-ES on per-block scores, decoded to a mask by keeping the top n - k.

    Options:
      ``popsize`` (None = CMA's default 4 + 3 ln d): candidates per ask (one generation).
      ``sigma0`` (0.5): initial step size; scores start at 0 so the first generation is random.
      ``restarts`` (9): fresh restarts (new random start, doubled popsize, IPOP-style)
      after CMA's own termination criteria fire, e.g. when the distribution collapses on one mask;
      done after the last one stops.
    """

    name = "cma"

    def __init__(self, constraint: Constraint, seed: int = 0, popsize: int | None = None,
                 sigma0: float = 0.5, restarts: int = 9):
        super().__init__(constraint, seed)
        self.popsize = check_int("popsize", popsize, minimum=2, allow_none=True)
        self.sigma0 = check_float("sigma0", sigma0, 0.0, open_low=True)
        self.restarts = check_int("restarts", restarts, minimum=0)
        self.dim = len(constraint.removable)
        self._np_state = {"seed": self.seed}
        self._runs = 0
        self._solutions: list[np.ndarray] = []
        self._pending: list[LayerMask] = []
        self.es = self._new_es()

    def _new_es(self):
        # cma treats seed 0/None as "seed from the clock": derive a positive one instead
        cma_seed = int(self.rng.integers(1, 2**31 - 1))
        x0 = np.zeros(self.dim) if self._runs == 0 else self.rng.normal(0.0, self.sigma0, self.dim)
        opts = {"seed": cma_seed, "verbose": -9, "verb_log": 0, "verb_disp": 0, "CMA_diagonal": False}
        if self.popsize is not None:
            opts["popsize"] = self.popsize * 2 ** self._runs
        elif self._runs:
            opts["popsize"] = int((4 + 3 * np.log(max(self.dim, 1))) * 2 ** self._runs)
        if self.dim == 1:
            # cma refuses 1-D problems; one removable block means one mask anyway
            return None
        with private_global_random(self._np_state), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _cma().CMAEvolutionStrategy(x0, self.sigma0, opts)

    def _decode(self, x: np.ndarray) -> LayerMask:
        scores = np.full(self.constraint.n_units, np.inf)
        scores[list(self.constraint.removable)] = x
        return self.constraint.from_scores(scores)

    def _ask(self) -> list[LayerMask]:
        if self.es is None:
            self._solutions = []
            self._pending = [self._decode(np.zeros(self.dim))]
            return list(self._pending)
        with private_global_random(self._np_state):
            self._solutions = self.es.ask()
        self._pending = [self._decode(x) for x in self._solutions]
        return list(self._pending)

    def _tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        if self.es is None:
            self._done = bool(len(masks))
            return
        if len(masks) < len(self._solutions):
            return  # a cut batch (budget exhausted): CMA needs the whole generation
        # the worst fitness is inf for failures; CMA ranks, so a large finite stand-in suffices
        finite = np.isfinite(fitness)
        if not finite.all():
            worst = np.max(fitness[finite]) if finite.any() else 0.0
            fitness = np.where(finite, fitness, worst + 1.0 + abs(worst))
        with private_global_random(self._np_state), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.es.tell(self._solutions, fitness.tolist())
            stopped = bool(self.es.stop())
        if stopped:
            if self._runs >= self.restarts:
                self._done = True
            else:
                self._runs += 1
                self.es = self._new_es()
