"""Every evaluation lands in an Optuna study, so ``optuna-dashboard`` shows every run.

One trial per distinct mask: its value is the objective's own value (the study's
direction is the objective's), its params are one 0/1 ``keep_NN`` per block, and user
attributes say which blocks were removed, by which searcher, at which fidelity. On resume
the trials already in the study seed the evaluator's memo, so a rerun with the same seed
replays the finished part of the search for free and carries on.

SQLite (the default) is for one process at a time; for several workers give a PostgreSQL
URL or a journal file (``journal:PATH``), which Optuna supports for concurrent writers.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import UserError
from .genome import LayerMask

DEFAULT_STORAGE = "sqlite:///dpopt-studies.db"


def open_storage(url: str):
    import optuna

    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url[len("journal:"):]))
    return url


class StudyTracker:
    def __init__(self, storage: str, study_name: str, direction: str, n_units: int, attrs: dict | None = None,
                 fidelity: int | None = None):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.n_units = n_units
        self.fidelity = fidelity
        self.attrs = dict(attrs or {})
        try:
            self.study = optuna.create_study(storage=open_storage(storage), study_name=study_name,
                                             direction=direction, load_if_exists=True)
        except Exception as exc:
            raise UserError(f"cannot open study {study_name!r} in {storage}: {str(exc).splitlines()[0]}") from None
        if self.study.direction.name.lower() != direction:
            raise UserError(f"study {study_name!r} exists with direction {self.study.direction.name.lower()}, "
                            f"but objective is to {direction}")
        for k, v in self.attrs.items():
            self.study.set_user_attr(k, v)
        self._recorded: set[bytes] = {LayerMask(self._bits(t.params)).key() for t in self.study.get_trials(deepcopy=False)
                                      if len(t.params) == n_units}

    def _bits(self, params: dict) -> list[bool]:
        return [bool(params[f"keep_{i:02d}"]) for i in range(self.n_units)]

    def previous(self) -> dict[bytes, float]:
        """Raw values of masks already recorded at this fidelity: the memo of a resumed run."""
        import optuna

        out = {}
        for t in self.study.get_trials(deepcopy=False):
            if len(t.params) != self.n_units or t.user_attrs.get("fidelity") != self.fidelity:
                continue
            mask = LayerMask(self._bits(t.params))
            if t.state == optuna.trial.TrialState.COMPLETE:
                out[mask.key()] = float(t.value)
            elif t.state == optuna.trial.TrialState.FAIL:
                out[mask.key()] = float("nan")
        return out

    def record_raw(self, masks: Sequence[LayerMask], raws: Sequence[float], reasons: dict[bytes, str] | None = None,
                   fidelity: int | None = None) -> None:
        import optuna
        from optuna.distributions import IntDistribution

        dist = {f"keep_{i:02d}": IntDistribution(0, 1) for i in range(self.n_units)}
        fid = self.fidelity if fidelity is None else fidelity
        for m, raw in zip(masks, raws):
            if m.key() in self._recorded:
                continue
            self._recorded.add(m.key())
            params = {f"keep_{i:02d}": int(b) for i, b in enumerate(m.bits)}
            attrs = dict(removed=list(m.removed()), n_removed=len(m.removed()), fidelity=fid)
            if math.isfinite(raw):
                trial = optuna.trial.create_trial(params=params, distributions=dist, value=float(raw), user_attrs=attrs)
            else:
                attrs["failure"] = (reasons or {}).get(m.key(), "non-finite objective value")
                trial = optuna.trial.create_trial(params=params, distributions=dist, user_attrs=attrs,
                                                  state=optuna.trial.TrialState.FAIL)
            self.study.add_trial(trial)


class EvaluatorTracker:
    """Adapts ``run_search``'s record(masks, fitness) to the study: logs raw values."""

    def __init__(self, tracker: StudyTracker, evaluator):
        self.tracker, self.evaluator = tracker, evaluator

    def record(self, masks, fitness) -> None:
        raws = []
        for m, f in zip(masks, fitness):
            raws.append(float("nan") if not np.isfinite(f) else (f if self.evaluator.direction == "minimize" else -f))
        self.tracker.record_raw(masks, raws, self.evaluator.failures)
