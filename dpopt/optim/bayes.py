"""Bayesian optimisation with Optuna's ask/tell interface (TPE by default, GP optional).

Each removable block gets a float score in [0, 1]; the ``n - k`` highest are kept
(``Constraint.from_scores``), so every trial is a valid mask without a penalty for
infeasible ones. The study is in memory and its sampler seeded, so a seed fixes the run.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import optuna

from ..errors import UserError
from ..genome import Constraint, LayerMask
from ._common import Candidates, SearcherBase, check_int
from .base import register_searcher

optuna.logging.set_verbosity(optuna.logging.WARNING)


@register_searcher("bayes")
class BayesSearch(SearcherBase):
    """Optuna TPE (or GP) on per-block scores, decoded to a mask by keeping the top n - k.

    Options:
      ``sampler`` ("tpe" | "gp", default "tpe"): GP is stronger on small budgets but slow per trial.
      ``batch_size`` (8): trials asked per batch (TPE uses a constant liar for the pending ones).
      ``n_startup_trials`` (10): random trials before the model is used.
      ``max_tries`` (2): trials per batch slot before giving up on finding an untold mask;
      a repeat is answered from the fitness already told, so the sampler still learns from it.
    Trial ``user_attrs["removed"]`` records the decoded mask for inspection of the study.
    """

    name = "bayes"

    def __init__(self, constraint: Constraint, seed: int = 0, sampler: str = "tpe",
                 batch_size: int = 8, n_startup_trials: int = 10, max_tries: int = 2):
        super().__init__(constraint, seed)
        self.batch_size = check_int("batch_size", batch_size)
        startup = check_int("n_startup_trials", n_startup_trials, minimum=0)
        if sampler == "tpe":
            smp = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=startup,
                                             multivariate=True, constant_liar=True)
        elif sampler == "gp":
            smp = optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=startup)
        else:
            raise UserError(f"bayes option sampler must be 'tpe' or 'gp', got {sampler!r}")
        self.sampler_name = sampler
        self.max_tries = check_int("max_tries", max_tries)
        self._open_study(smp)

    def _open_study(self, sampler: optuna.samplers.BaseSampler) -> None:
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        self._trials = Candidates(self.archive, self._tell_one)

    def _trial_mask(self, trial: optuna.trial.Trial) -> LayerMask:
        scores = np.full(self.constraint.n_units, np.inf)
        for i in self.constraint.removable:
            scores[i] = trial.suggest_float(f"s{i}", 0.0, 1.0)
        mask = self.constraint.from_scores(scores)
        trial.set_user_attr("removed", list(mask.removed()))
        return mask

    def _ask(self) -> list[LayerMask]:
        """Ask trials until ``batch_size`` new masks; repeats of told masks are told at once.

        Many score vectors decode to one mask, and TPE readily re-proposes the incumbent;
        answering those from what is already known keeps every batch informative. After
        ``max_tries`` repeats in a row the sampler is stuck, so a swap neighbour of the best
        mask is enqueued as the next trial (the study still learns from it).
        """
        self._fail_pending()
        batch: dict[bytes, LayerMask] = {}
        repeats = 0
        for _ in range(4 * self.max_tries * self.batch_size):
            if len(batch) >= self.batch_size:
                break
            if repeats >= self.max_tries:
                self._enqueue_escape(batch)
                repeats = 0
            trial = self.study.ask()
            mask = self._trial_mask(trial)
            if not self._trials.offer(trial, mask) or mask.key() in batch:
                repeats += 1
                continue
            repeats = 0
            batch[mask.key()] = mask
        return list(batch.values())

    def _enqueue_escape(self, batch: dict[bytes, LayerMask]) -> None:
        start = self.best[0] if self.best[0] is not None else self.constraint.random_mask(self.rng)
        mask = None
        for n_swaps in range(1, self.constraint.k + 1):
            for _ in range(10):
                m = self.constraint.swap_mutation(start, self.rng, n_swaps)
                if m.key() not in self.archive and m.key() not in batch:
                    mask = m
                    break
            if mask is not None:
                break
        if mask is None:
            mask = self.constraint.random_mask(self.rng)
        # scores below 0.5 for removed blocks, above for kept: decodes back to exactly this mask
        low = self.rng.uniform(0.0, 0.5, self.constraint.n_units)
        high = self.rng.uniform(0.5, 1.0, self.constraint.n_units)
        params = {f"s{i}": float(high[i] if mask.bits[i] else low[i]) for i in self.constraint.removable}
        self.study.enqueue_trial(params)

    def _tell_one(self, trial: optuna.trial.Trial, f: float) -> None:
        if np.isfinite(f):
            self.study.tell(trial, float(f))
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        for trial, f in self._trials.settle(masks, fitness):
            self._tell_one(trial, math.inf if f is None else f)

    def _fail_pending(self) -> None:
        """Trials never told (budget cut the batch) are closed so they do not linger as RUNNING."""
        for trial, _ in self._trials.settle([], []):
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
