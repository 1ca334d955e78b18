"""The Optuna study is the record of a search: complete, fingerprinted, resumable, shared.

* **One trial per (mask, fidelity)** evaluated in the study, raced or not (COMPLETE for a
  candidate answer, PRUNED with its value for the dense reference and greedy's
  intermediate steps, so the study's best trial is always an answer): the raw value as
  the objective reports it (the study's direction is the objective's), the fidelity in
  tokens or questions, real start and end times, the failure reason, and who asked for it
  (run id, searcher, seed, batch number). A mask another run of the same grid already
  scored is recorded too, marked ``computed: false``, so every study shows its whole run.
* **A fingerprint** of everything that changes a mask's value (model identity, dtype,
  objective and its settings, data, split, data seed) is stored on the study; opening a
  study recorded under another fingerprint is refused, naming the settings that differ.
  So a resumed memo never holds a value measured under other settings.
* **Claims, not a set read once.** Before scoring, a process claims each (mask, fidelity)
  under the study's lock: a trial that does not exist yet is created RUNNING and owned by
  this process; a WAITING one (queued, or released by an interrupted run) is taken; a
  RUNNING one whose owner is alive is waited for; one whose owner died (same host and its
  pid is gone, or no heartbeat for ``DPOPT_LEASE_SECONDS``) is adopted. Two processes on one
  study therefore never score the same mask twice, and a killed run loses nothing.
* **The queue.** In queue mode (``dpopt search --workers N`` or ``--queue``) a claim creates
  WAITING trials instead and waits: ``dpopt worker`` processes (:mod:`dpopt.record.worker`) take
  them with Optuna's atomic WAITING->RUNNING transition, score them and complete them. A
  stale RUNNING trial goes back to WAITING (not FAIL: one trial per evaluation, never a
  duplicate row), so another worker scores it; the study carries the ``recipe`` a worker
  rebuilds the evaluator from, and its fingerprint decides whether the worker may.

What Optuna already guarantees is used as is: a storage's atomic WAITING->RUNNING
transition (what ``study.ask()`` pops an enqueued trial with) is how a worker takes a mask,
so two workers never take one. What is home-made is what Optuna lacks: one score per
(mask, fidelity) across concurrent searches and workers (Optuna's trials are per ask, so two
searches asking one mask make two trials); a stale claim going back to WAITING rather than
FAIL (Optuna's ``fail_stale_trials`` + ``RetryFailedTrialCallback`` would leave a failed row
and a copy for every death, and its heartbeat exists only for RDB storages, not journal
files); and a lease that sees a dead pid on the same host at once.

Writers serialise on a lease (:mod:`dpopt.record.lease`): a lock file beside a SQLite
database or a journal, a row of ``dpopt_locks`` on PostgreSQL. A process frozen while it
holds it delays the others by one lease at most. For many processes or machines give a
PostgreSQL URL or ``journal:FILE``.
"""
from .fingerprint import Fingerprint
from .storage import DEFAULT_STORAGE, check_storage_writable, open_storage, storage_kind
from .study import RunInfo, StudyRecord

__all__ = ["DEFAULT_STORAGE", "Fingerprint", "RunInfo", "StudyRecord", "check_storage_writable", "open_storage",
           "storage_kind"]
