"""The study record: one trial per (mask, fidelity), claims, the queue and completions.

See :mod:`dpopt.record` for what the record guarantees.
"""
from __future__ import annotations

import contextlib
import math
import socket
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

from ..errors import UserError
from ..genome import LayerMask
from .fingerprint import Fingerprint
from .liveness import HB_PREFIX, Heartbeat, lease_seconds, new_owner, pid_alive
from .lease import LeaseLost, make_lock
from .queue import QueueMixin, trial_id
from .storage import one_line, open_storage, root_cause, storage_errors

POLL_SECONDS = 0.5
QUEUE_POLL_SECONDS = 0.1


def param_name(unit: str) -> str:
    return f"keep_{unit}"


@dataclass
class RunInfo:
    """Who asks: stamped on every trial this process creates."""

    algo: str = ""
    seed: int | None = None
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    extra: dict[str, Any] = field(default_factory=dict)


class StudyRecord(QueueMixin):
    """One study as the shared, resumable record of every evaluation (see the module docstring)."""

    def __init__(self, storage: str, study_name: str, fingerprint: Fingerprint, metric: str, direction: str,
                 unit_names: Sequence[str], run: RunInfo | None = None, create: bool = True,
                 candidate_size: int | None = None, recipe: dict | None = None, owner: str | None = None,
                 candidate=None, costs: Sequence = ()):
        import optuna
        from optuna.distributions import IntDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.url, self.study_name = storage, study_name
        self.fingerprint, self.metric, self.direction = fingerprint, metric, direction
        self.unit_names = list(unit_names)
        self.params = [param_name(u) for u in self.unit_names]
        self.distributions = {p: IntDistribution(0, 1) for p in self.params}
        self.run = run or RunInfo()
        self.candidate_size = candidate_size
        self.candidate = candidate  # is_valid of the run's constraint: which masks are answers (COMPLETE)
        self.costs = list(costs)  # a multi-objective study: each trial's values are [raw, *costs(mask)]
        self.directions = [direction] + ["minimize"] * len(self.costs)
        self.batch: int | None = None
        self.owner = owner or new_owner()
        self.recipe = recipe
        self.queue = False  # True: claims enqueue WAITING trials for workers instead of scoring here
        self.monitor = None  # queue mode: called while waiting; raises when the workers cannot finish
        self._last_worker_seen: float | None = None  # queue mode without a monitor: when a worker last beat
        self.storage = open_storage(storage)
        self._lock = make_lock(storage, self.storage, study_name)
        self.study = self._open_study(create)
        self.study_id = self.storage.get_study_id_from_name(study_name)
        self._by_key: dict[tuple[bytes, Any], Any] = {}  # (mask key, fidelity) -> FrozenTrial
        self._mine: dict[tuple[bytes, Any], int] = {}  # claimed by this process: -> trial id
        self.heartbeat = Heartbeat(self.storage, self.study_id, self.owner, active=lambda: bool(self._mine))

    # --- opening ---------------------------------------------------------------------------
    def _open_study(self, create: bool):
        """Under the lock, so two processes opening one new study with other settings at the same
        instant cannot both proceed: the second sees the first's fingerprint and is refused."""
        with self._storage_errors():
            return self._locked(self._open_study_locked, create)

    def _open_study_locked(self, create: bool):
        import optuna

        try:
            if create:
                study = optuna.create_study(storage=self.storage, study_name=self.study_name,
                                            directions=self.directions, load_if_exists=True)
            else:
                study = optuna.load_study(storage=self.storage, study_name=self.study_name)
        except KeyError:
            raise UserError(f"no study named {self.study_name!r} in {self.url}") from None
        except Exception as exc:
            raise UserError(f"cannot open study {self.study_name!r} in {self.url}: {one_line(exc)}") from None
        directions = [d.name.lower() for d in study.directions]
        if directions != self.directions:
            raise UserError(f"study {self.study_name!r} exists with directions {', '.join(directions)}, "
                            f"but this run minimises {', '.join(self.metrics)} in directions {', '.join(self.directions)}")
        attrs = study.user_attrs
        if "fingerprint" in attrs and attrs["fingerprint"] != self.fingerprint.digest:
            diff = self.fingerprint.differences(attrs.get("settings", {}))
            raise UserError(f"study {self.study_name!r} in {self.url} was recorded with other settings "
                            f"({'; '.join(diff[:4]) or 'fingerprint differs'}); use another --study name "
                            "or leave --study out for one named after these settings")
        if "fingerprint" not in attrs:
            study.set_user_attr("fingerprint", self.fingerprint.digest)
            study.set_user_attr("settings", self.fingerprint.settings)
            study.set_user_attr("units", self.unit_names)
        if "fingerprint" not in attrs or (self.recipe is not None and "recipe" not in attrs):
            if self.recipe is not None:
                study.set_user_attr("recipe", self.recipe)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental in Optuna, and what the dashboard reads
                study.set_metric_names(self.metrics)
        study.set_user_attr(f"run:{self.run.run}", dict(algo=self.run.algo, seed=self.run.seed, owner=self.owner,
                                                        started=datetime.now().isoformat(timespec="seconds"),
                                                        **self.run.extra))
        return study

    def _locked(self, fn, *args):
        """``fn(*args)`` under the study lock; from the start again if this process was stalled past
        the lock's lease and lost it (see :mod:`.lease`)."""
        for _ in range(3):
            try:
                with self._lock():
                    return fn(*args)
            except LeaseLost:
                continue
        raise UserError(f"lost the lock on study {self.study_name!r} three times in a row: is this process "
                        "being stopped or starved?")

    @contextlib.contextmanager
    def _storage_errors(self):
        """A storage that fails (disk full, server gone) is one line, not a traceback from inside Optuna."""
        try:
            yield
        except storage_errors() as exc:
            raise UserError(f"storage {self.url} failed: {root_cause(exc)}") from None

    @property
    def metrics(self) -> list[str]:
        return [self.metric] + [c.name for c in self.costs]

    def _values(self, mask: LayerMask, raw: float) -> list[float]:
        """A trial's values: the objective's, then each cost's (cached per mask by the cost)."""
        return [float(raw)] + [float(c.values([mask])[0]) for c in self.costs]

    # --- reading -----------------------------------------------------------------------------
    def mask_of(self, params: dict) -> LayerMask | None:
        if len(params) != len(self.params) or any(p not in params for p in self.params):
            return None
        return LayerMask([bool(params[p]) for p in self.params])

    def _sync(self) -> None:
        """Re-read the study's trials; per (mask, fidelity) keep the most final one."""
        import optuna

        rank = {optuna.trial.TrialState.COMPLETE: 3, optuna.trial.TrialState.PRUNED: 3, optuna.trial.TrialState.FAIL: 2,
                optuna.trial.TrialState.RUNNING: 1, optuna.trial.TrialState.WAITING: 0}
        by_key: dict[tuple[bytes, Any], Any] = {}
        for t in self.storage.get_all_trials(self.study_id, deepcopy=False):
            mask = self.mask_of(t.params)
            if mask is None or t.state not in rank:
                continue
            k = (mask.key(), t.user_attrs.get("fidelity"))
            old = by_key.get(k)
            if old is None or (rank[t.state], -t.number) > (rank[old.state], -old.number):
                by_key[k] = t
        self._by_key = by_key

    def previous(self) -> tuple[dict[tuple[bytes, Any], float], dict[bytes, str]]:
        """Values of every finished evaluation at every fidelity: a resumed run's memo."""
        import optuna

        self._sync()
        values, failures = {}, {}
        known: list[dict[bytes, float]] = [{} for _ in self.costs]
        for k, t in self._by_key.items():
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
                values[k] = float(t.values[0])
                if len(t.values) == 1 + len(self.costs):  # costs are per mask: not measured again on resume
                    for cost_known, v in zip(known, t.values[1:]):
                        cost_known[k[0]] = float(v)
            elif t.state == optuna.trial.TrialState.FAIL:
                values[k] = float("nan")
                failures[k[0]] = t.user_attrs.get("failure", "failed")
        for cost, cost_known in zip(self.costs, known):
            cost.seed(cost_known)
        return values, failures

    def n_trials(self) -> int:
        return len(self.storage.get_all_trials(self.study_id, deepcopy=False))

    # --- claiming -----------------------------------------------------------------------------
    def begin_batch(self, number: int) -> None:
        self.batch = number

    def _attrs(self, mask: LayerMask, fidelity, computed: bool) -> dict:
        removed = [self.unit_names[i] for i in mask.removed()]
        attrs = dict(removed=removed, n_removed=len(removed), fidelity=fidelity, computed=computed,
                     run=self.run.run, algo=self.run.algo, seed=self.run.seed, batch=self.batch)
        return attrs if self._is_candidate(mask) is None else dict(attrs, candidate=self._is_candidate(mask))

    def _is_candidate(self, mask: LayerMask) -> bool | None:
        """Whether the run's constraint makes ``mask`` an answer; None for a record with no rule (a worker's)."""
        if self.candidate is not None:
            return bool(self.candidate(mask))
        if self.candidate_size is not None:
            return len(mask.removed()) == self.candidate_size
        return None

    def _done_state(self, mask: LayerMask, flag: bool | None = None):
        """COMPLETE for a candidate answer; PRUNED (value kept) for the dense reference and for
        greedy's steps with fewer units removed, so the study's best trial is a real answer.
        ``flag``: the trial's "candidate" attr, set by the run that asked for it; a worker, which
        knows no constraint, completes by it."""
        from optuna.trial import TrialState

        candidate = flag if flag is not None else self._is_candidate(mask)
        return TrialState.PRUNED if candidate is False else TrialState.COMPLETE

    def _params(self, mask: LayerMask) -> dict[str, int]:
        return {p: int(b) for p, b in zip(self.params, mask.bits)}

    def _new_trial(self, mask: LayerMask, fidelity, state, value: float | None = None, reason: str | None = None,
                   computed: bool = True) -> int:
        from optuna.trial import FrozenTrial, TrialState

        now = datetime.now()
        attrs = self._attrs(mask, fidelity, computed)
        if reason:
            attrs["failure"] = reason
        finished = state.is_finished()
        template = FrozenTrial(number=-1, state=state, value=None,
                               values=self._values(mask, value) if value is not None else None,
                               datetime_start=now, datetime_complete=now if finished else None,
                               params=self._params(mask), distributions=self.distributions, user_attrs=attrs,
                               system_attrs={"dpopt:owner": self.owner} if state == TrialState.RUNNING else {},
                               intermediate_values={}, trial_id=-1)
        return self.storage.create_new_trial(self.study_id, template_trial=template)

    def _stale(self, trial, beats: dict) -> bool:
        """``beats``: the study's system attrs, read once per claim rather than once per trial."""
        owner = trial.system_attrs.get("dpopt:owner")
        if not owner:
            return True
        host, _, rest = owner.partition(":")
        pid = int(rest.partition(":")[0] or 0)
        if host == socket.gethostname() and pid and not pid_alive(pid):
            return True
        beat = beats.get(f"{HB_PREFIX}{owner}")
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        return time.time() - max(beat or 0.0, started) > lease_seconds()

    def claim(self, masks: Sequence[LayerMask], fidelity, memo: dict, failures: dict) -> tuple[list, list]:
        """Split ``masks`` into (to score here, to wait for); known values go into ``memo``.

        Every mask gets a trial in this study: a memo hit not recorded here yet is copied in
        (``computed: false``), a miss is created RUNNING and owned by this process.
        """
        with self._storage_errors():
            todo, waiting = self._locked(self._claim, masks, fidelity, memo, failures)
            if self._mine:
                self.heartbeat.start()
        return todo, waiting

    def _claim(self, masks: Sequence[LayerMask], fidelity, memo: dict, failures: dict) -> tuple[list, list]:
        from optuna.trial import TrialState

        todo, waiting = [], []
        beats: dict | None = None

        def stale(trial) -> bool:
            nonlocal beats
            if beats is None:
                beats = self.storage.get_study_system_attrs(self.study_id)
            return self._stale(trial, beats)

        self._sync()
        for m in masks:
            self._lock.guard()
            k = (m.key(), fidelity)
            t = self._by_key.get(k)
            if t is None:
                if k in memo:
                    raw = memo[k]
                    if math.isfinite(raw):
                        self._new_trial(m, fidelity, self._done_state(m), raw, computed=False)
                    else:
                        self._new_trial(m, fidelity, TrialState.FAIL, reason=failures.get(m.key(), "non-finite value"),
                                        computed=False)
                    continue
                if self.queue:
                    self._new_trial(m, fidelity, TrialState.WAITING)
                    waiting.append(m)
                    continue
                self._mine[k] = self._new_trial(m, fidelity, TrialState.RUNNING)
                todo.append(m)
            elif t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                memo[k] = float(t.values[0])
            elif t.state == TrialState.FAIL:
                memo[k] = float("nan")
                failures.setdefault(m.key(), t.user_attrs.get("failure", "failed"))
            elif k in memo:
                continue  # someone else is scoring it, but we already know the value
            elif self.queue:
                if t.state == TrialState.RUNNING and stale(t):  # its worker died: back to the queue
                    self.storage.set_trial_state_values(trial_id(t), TrialState.WAITING)
                waiting.append(m)
            elif t.state == TrialState.RUNNING and t.system_attrs.get("dpopt:owner") == self.owner:
                self._mine[k] = trial_id(t)  # created by an attempt of this claim that lost the lock
                todo.append(m)
            elif t.state == TrialState.WAITING:
                if self.storage.set_trial_state_values(trial_id(t), TrialState.RUNNING):
                    self._take(t, k)
                    todo.append(m)
                else:
                    waiting.append(m)
            elif stale(t):
                self._take(t, k)
                todo.append(m)
            else:
                waiting.append(m)
        return todo, waiting

    def _take(self, trial, k) -> None:
        self.storage.set_trial_system_attr(trial_id(trial), "dpopt:owner", self.owner)
        for key, value in self._attrs(self.mask_of(trial.params), k[1], True).items():
            self.storage.set_trial_user_attr(trial_id(trial), key, value)
        self._mine[k] = trial_id(trial)

    def complete(self, masks: Sequence[LayerMask], fidelity, raws: Sequence[float], failures: dict,
                 seconds: float) -> None:
        """Finish this process's trials: COMPLETE (or PRUNED) with the raw value, or FAIL with the reason."""
        share = seconds / max(len(masks), 1)
        with self._storage_errors():  # under the lock: an adoption and a completion never cross
            self._locked(self._complete, masks, fidelity, raws, failures, share)

    def _complete(self, masks: Sequence[LayerMask], fidelity, raws: Sequence[float], failures: dict,
                  share: float) -> None:
        from optuna.trial import TrialState

        for m, raw in zip(masks, raws):
            k = (m.key(), fidelity)
            tid = self._mine.get(k)
            if tid is None:
                continue
            self._lock.guard()
            t = self.storage.get_trial(tid)
            if t.state.is_finished() or t.system_attrs.get("dpopt:owner") != self.owner:
                self._mine.pop(k)
                continue  # adopted by another process that took us for dead: its value stands
            self.storage.set_trial_user_attr(tid, "seconds", round(share, 6))
            if math.isfinite(raw):
                state = self._done_state(m, t.user_attrs.get("candidate"))
                self.storage.set_trial_state_values(tid, state, self._values(m, raw))
            else:
                self.storage.set_trial_user_attr(tid, "failure", failures.get(m.key(), f"non-finite value ({raw})"))
                self.storage.set_trial_state_values(tid, TrialState.FAIL)
            self._mine.pop(k)

    def release(self, masks: Sequence[LayerMask] | None = None, fidelity=None) -> None:
        """Give unscored claims back to the queue (WAITING), e.g. when scoring was interrupted;
        ``masks=None``: every trial this process holds RUNNING, noted in ``_mine`` or not (an
        interrupt can land between creating a claim and noting it)."""
        with self._storage_errors():
            self._locked(self._release, masks, fidelity)

    def _release(self, masks: Sequence[LayerMask] | None, fidelity) -> None:
        from optuna.trial import TrialState

        if masks is None:
            self._mine.clear()
            held = [trial_id(t) for t in self.storage.get_all_trials(self.study_id, deepcopy=False,
                                                                       states=(TrialState.RUNNING,))
                    if t.system_attrs.get("dpopt:owner") == self.owner]
        else:
            held = [tid for tid in (self._mine.pop((m.key(), fidelity), None) for m in masks) if tid is not None]
        for tid in held:
            self._lock.guard()
            t = self.storage.get_trial(tid)
            if not t.state.is_finished() and t.system_attrs.get("dpopt:owner") == self.owner:
                self.storage.set_trial_state_values(tid, TrialState.WAITING)

    def wait(self, masks: Sequence[LayerMask], fidelity, memo: dict, failures: dict) -> list[LayerMask]:
        """Block until others finish ``masks``; return the ones this process must score after all
        (their owner died, or released them)."""
        pending = list(masks)
        delay = QUEUE_POLL_SECONDS if self.queue else POLL_SECONDS
        while pending:
            time.sleep(delay)
            if self.queue:
                self.check_workers()
            before = len(pending)
            todo, pending = self.claim(pending, fidelity, memo, failures)
            if self.queue:  # back off while nothing finishes: a poll costs the workers' CPU and the database
                delay = QUEUE_POLL_SECONDS if len(pending) < before else min(delay * 1.5, 1.0)
            if todo:
                return todo
        return []

    # --- liveness ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop beating; every claim still held (a run interrupted anywhere: scoring, claiming,
        completing) goes back to the queue as WAITING. Best effort: a storage that cannot be
        written leaves them RUNNING under an owner about to be gone, adopted at once on this host."""
        with contextlib.suppress(Exception):
            self.release()
        self.heartbeat.stop()


def unit_param_names(space) -> list[str]:
    """Trial params ``keep_<unit>``: ``keep_00`` for blocks (as recorded before unit spaces), else
    ``keep_attn.3``. ``space``: a UnitSpace, or a number of plain bits."""
    if isinstance(space, int):
        return [f"{i:02d}" for i in range(space)]
    if space.kind == "block":
        return [f"{i:02d}" for i in range(space.n_blocks)]
    return list(space.names)


def study_name(model: str, evaluator, algo: str, size: str, seed: int) -> str:
    """Named after the settings, so a changed setting opens a new study instead of a stale one."""
    from pathlib import Path

    units = "" if evaluator.units is None or evaluator.units.kind == "block" else f"-{evaluator.units.kind}"
    costs = "".join(f"-vs-{c.name}" for c in evaluator.costs)
    fp = evaluator.fingerprint.short if evaluator.fingerprint is not None else "synthetic"
    return f"{Path(str(model)).name}-{evaluator.metric}{costs}{units}-{algo}-{size}-seed{seed}-{fp}"


def open_record(evaluator, storage: str, study: str, algo: str, seed: int, n_units: int,
                candidate=None, extra: dict | None = None) -> StudyRecord:
    """The study one run records into, for any evaluator (a model's or a synthetic function).

    ``candidate``: which masks are answers (COMPLETE; the rest PRUNED with their values);
    None: every mask is."""
    fingerprint = evaluator.fingerprint
    if fingerprint is None:
        fingerprint = Fingerprint({"evaluator": type(evaluator).__name__, "objective": evaluator.metric})
    units = unit_param_names(evaluator.units if evaluator.units is not None else n_units)
    recipe = evaluator.problem.recipe() if evaluator.problem is not None else None
    return StudyRecord(storage, study, fingerprint, evaluator.metric, evaluator.direction, units,
                       RunInfo(algo=algo, seed=seed, extra=dict(extra or {})), recipe=recipe, candidate=candidate,
                       costs=evaluator.costs)
