"""Bayesian optimisation with Optuna's ask/tell interface (TPE by default, GP optional).

Each removable block gets a float score in [0, 1]; the ``n - k`` highest are kept
(``Constraint.from_scores``), so every trial is a valid mask without a penalty for
infeasible ones. The study is in memory and its sampler seeded, so a seed fixes the run.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import optuna

from ..errors import UserError
from ..genome import Constraint, LayerMask
from ._common import SearcherBase, check_int
from .base import register_searcher

optuna.logging.set_verbosity(optuna.logging.WARNING)


@register_searcher("bayes", "optuna")
class BayesSearch(SearcherBase):
    """Options:
      ``sampler`` ("tpe" | "gp", default "tpe"): GP is stronger on small budgets but slow per trial.
      ``batch_size`` (8): trials asked per batch (TPE uses a constant liar for the pending ones).
      ``n_startup_trials`` (10): random trials before the model is used.
    Trial ``user_attrs["removed"]`` records the decoded mask for inspection of the study.
    """

    name = "bayes"

    def __init__(self, constraint: Constraint, seed: int = 0, sampler: str = "tpe",
                 batch_size: int = 8, n_startup_trials: int = 10):
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
        self.study = optuna.create_study(direction="minimize", sampler=smp)
        self._pending: list[tuple[optuna.trial.Trial, LayerMask]] = []

    def _trial_mask(self, trial: optuna.trial.Trial) -> LayerMask:
        scores = np.full(self.constraint.n_units, np.inf)
        for i in self.constraint.removable:
            scores[i] = trial.suggest_float(f"s{i}", 0.0, 1.0)
        mask = self.constraint.from_scores(scores)
        trial.set_user_attr("removed", list(mask.removed()))
        return mask

    def ask(self) -> list[LayerMask]:
        self._fail_pending()
        for _ in range(self.batch_size):
            trial = self.study.ask()
            self._pending.append((trial, self._trial_mask(trial)))
        return [m for _, m in self._pending]

    def tell(self, masks: Sequence[LayerMask], fitness: np.ndarray) -> None:
        fitness = np.asarray(fitness, dtype=float)
        self._record(masks, fitness)
        # matched by mask, not position: a cut batch tells a prefix, and several trials
        # may decode to the same mask (all get its fitness)
        told = {m.key(): float(f) for m, f in zip(masks, fitness)}
        for trial, mask in self._pending:
            f = told.get(mask.key())
            if f is None or not np.isfinite(f):
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial, f)
        self._pending = []

    def _fail_pending(self) -> None:
        """Trials never told (budget cut the batch) are closed so they do not linger as RUNNING."""
        for trial, _ in self._pending:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self._pending = []
