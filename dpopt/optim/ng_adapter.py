"""``ng:NAME``: any optimizer in nevergrad's registry, through the same ask/tell adapter.

Each removable block gets one real score; a mask keeps the ``n - k`` highest
(``Constraint.from_scores``), the decoding cma and bayes use, so every candidate removes
exactly ``k`` blocks without a penalty. The discrete (1+1) family (DiscreteLenglerOnePlusOne,
PortfolioDiscreteOnePlusOne, ...) resamples a few coordinates per mutation; on a score
vector that moves a block across the keep/remove boundary, which is a swap move. The
scores are a plain unbounded ``ng.p.Array``: the discrete optimizers redraw a coordinate,
so only ranks matter to them and bounds add nothing, while bounds would narrow the moves
of the continuous ones (NGOpt's choices among them).

Many score vectors decode to one mask. A candidate whose mask was told before is answered
at once from what is known (nevergrad still learns from it) and does not enter the batch,
so a batch is always ``batch_size`` masks dpopt has not scored — up to ``max_tries`` asks
per slot, after which the batch is returned short. A round that yields no new mask at all
means the optimizer has converged (a continuous (1+1) whose step size collapsed, say), and
the searcher is done: no move of dpopt's own is slipped in, so the run is nevergrad's alone.
"""
from __future__ import annotations

import contextlib
import difflib
import math
import warnings
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..genome import Constraint, LayerMask
from ._common import Candidates, SearcherBase, check_int, private_global_random
from .base import SEARCHERS


def _registry():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nevergrad as ng
    return ng


class NevergradSearch(SearcherBase):
    """A nevergrad optimizer on per-block scores, decoded to a mask by keeping the top n - k.

    Options:
      ``batch_size`` (8): masks per ask; also nevergrad's ``num_workers``.
      ``budget`` (2000): the budget nevergrad plans for (NGOpt picks its algorithm from it);
      asks answered from the memo count too, hence generous. Done when nevergrad has asked it.
      ``max_tries`` (4): asks per batch slot before a batch is returned short.
    """

    optimizer = ""  # set on the per-name subclass made by ``resolve``
    name = "ng"

    def __init__(self, constraint: Constraint, seed: int = 0, batch_size: int = 8, budget: int = 2000,
                 max_tries: int = 4):
        super().__init__(constraint, seed)
        ng = _registry()
        self.batch_size = check_int("batch_size", batch_size)
        self.budget = check_int("budget", budget)
        self.max_tries = check_int("max_tries", max_tries)
        self.dim = len(constraint.removable)
        param = ng.p.Array(shape=(self.dim,))
        param.random_state = np.random.RandomState(self.seed % 2**32)
        # some optimizers draw from the global np.random too: keep that stream private per searcher
        self._np_state = {"seed": self.seed}
        with self._quiet(), self._missing_package():
            self.opt = ng.optimizers.registry[self.optimizer](
                parametrization=param, budget=self.budget,
                num_workers=1 if self.optimizer_no_parallel() else self.batch_size)
        self._refuse_threaded()
        self._points = Candidates(self.archive, self._tell_one)

    def _refuse_threaded(self) -> None:
        """Nevergrad's wrappers of scipy & co. (SQP, Cobyla, NelderMead...) run the library in a
        thread that blocks on the second ask before a tell and keeps the process alive at exit."""
        from nevergrad.optimization.recaster import SequentialRecastOptimizer

        for opt in (self.opt, getattr(self.opt, "optim", None)):
            if isinstance(opt, SequentialRecastOptimizer):
                raise UserError(f"{self.name} wraps a sequential library in a thread ({type(opt).__name__}) "
                                "and cannot take batches; pick another nevergrad optimizer")

    @classmethod
    def optimizer_no_parallel(cls) -> bool:
        return bool(getattr(_registry().optimizers.registry[cls.optimizer], "no_parallelization", False))

    @contextlib.contextmanager
    def _missing_package(self):
        """Some optimizers import an optional package (ax, bayes_opt...) when built or first asked."""
        try:
            yield
        except ImportError as exc:
            raise UserError(f"{self.name} needs a package that is not installed: {exc}") from None

    @contextlib.contextmanager
    def _quiet(self):
        with warnings.catch_warnings(), private_global_random(self._np_state):
            warnings.simplefilter("ignore")
            yield

    def _decode(self, x: np.ndarray) -> LayerMask:
        scores = np.full(self.constraint.n_units, np.inf)
        scores[list(self.constraint.removable)] = np.asarray(x, dtype=float).reshape(-1)
        return self.constraint.from_scores(scores)

    def _ask(self) -> list[LayerMask]:
        self._points.settle([], [])  # candidates cut off by the budget are never told: nevergrad allows that
        batch: dict[bytes, LayerMask] = {}
        with self._quiet(), self._missing_package():
            for _ in range(self.max_tries * self.batch_size):
                if len(batch) >= self.batch_size:
                    break
                if self.opt.num_ask >= self.budget:
                    self._done = not batch
                    break
                cand = self.opt.ask()
                mask = self._decode(cand.value)
                if self._points.offer(cand, mask):
                    batch[mask.key()] = mask
        if not batch:
            self._done = True  # converged: a whole round of asks decoded only to masks already scored
        return list(batch.values())

    def _tell_one(self, cand, f: float) -> None:
        # nevergrad clips huge losses itself; a failed mask (inf) becomes its worst value
        self.opt.tell(cand, float(f) if math.isfinite(f) else 5.0e20)

    def _tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        with self._quiet():
            for cand, f in self._points.settle(masks, fitness):
                if f is not None:
                    self._tell_one(cand, f)


_CLASSES: dict[str, type] = {}


def resolve(name: str) -> type:
    """The searcher class for ``ng:NAME``; a UserError with close names when NAME is unknown."""
    registry = _registry().optimizers.registry
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(EXAMPLES)}"
        raise UserError(f"unknown nevergrad optimizer {name!r} ({len(registry)} in ng.optimizers.registry); {hint}")
    if name not in _CLASSES:
        _CLASSES[name] = type(f"Nevergrad_{name}", (NevergradSearch,), {
            "optimizer": name, "name": f"ng:{name}",
            "__doc__": f"nevergrad's {name} on per-block scores (top n - k kept).\n\n" + NevergradSearch.__doc__,
        })
    return _CLASSES[name]


EXAMPLES = ("DiscreteLenglerOnePlusOne", "PortfolioDiscreteOnePlusOne", "NGOpt")

SEARCHERS.register_prefix("ng", resolve, "any optimizer of nevergrad's registry, e.g. ng:" + EXAMPLES[0])
