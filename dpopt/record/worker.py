"""``dpopt worker``: score the masks a search queued in its study, on this device.

The study is the work queue; dpopt adds no scheduler. A search in queue mode
(``--workers N`` or ``--queue``) creates each mask it asks for as a WAITING trial and waits;
a worker rebuilds the search's evaluator from the study's ``recipe`` (and refuses when its
fingerprint differs: other weights, other data), takes a share of the WAITING trials with
Optuna's atomic WAITING->RUNNING transition, scores them in one batched call per fidelity
(so prefix sharing still pays), and completes them. Its heartbeat marks it alive; a worker
that dies leaves RUNNING trials whose owner is gone, and the waiting search puts them back
in the queue for another worker.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .liveness import Heartbeat, new_owner
from .storage import one_line, open_storage, require_existing
from .study import QUEUE_POLL_SECONDS, RunInfo, StudyRecord

DEFAULT_TAKE = 64
PARENT_ENV = "DPOPT_WORKER_PARENT"  # set by --workers: the search's pid, which this worker must not outlive
PR_SET_PDEATHSIG = 1


@dataclass
class WorkerStats:
    owner: str
    scored: int = 0
    batches: int = 0
    seconds: float = 0.0


def study_recipe(storage: str, study: str) -> tuple[dict, dict]:
    """(user attrs, recipe) of a queued study; a missing study or recipe is a UserError."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    require_existing(storage)  # a worker reads a study: it never creates an empty database or journal
    st = open_storage(storage)
    try:
        study_id = st.get_study_id_from_name(study)
    except KeyError:
        raise UserError(f"no study named {study!r} in {storage}") from None
    except Exception as exc:
        raise UserError(f"cannot read storage {storage}: {one_line(exc)}") from None
    attrs = st.get_study_user_attrs(study_id)
    recipe = attrs.get("recipe")
    if not recipe or "fingerprint" not in attrs:
        raise UserError(f"study {study!r} in {storage} has no dpopt recipe (only a search run with --workers "
                        "or --queue can be scored by workers)")
    return attrs, recipe


def build_evaluator(attrs: dict, recipe: dict, device: str, study: str):
    """Rebuild the search's evaluator here; refuse unless it reproduces the study's fingerprint."""
    from ..problem import Problem

    try:
        problem = Problem.from_recipe(recipe)
        lm = problem.load(device)
        ev = problem.build(lm)
    except UserError as exc:
        raise UserError(f"this worker cannot rebuild study {study!r}'s evaluator: {exc}") from None
    if ev.fingerprint.digest != attrs["fingerprint"]:
        diff = ev.fingerprint.differences(attrs.get("settings", {}))
        raise UserError(f"study {study!r} was recorded with another model or data than this worker has "
                        f"({'; '.join(diff[:3]) or 'fingerprint differs'}); refusing to score it")
    return lm, ev


def run_worker(storage: str, study: str, device: str = "auto", take: int = DEFAULT_TAKE,
               idle_exit: float | None = None, log=print) -> WorkerStats:
    """Take, score, complete, until stopped (SIGINT/SIGTERM) or idle for ``idle_exit`` seconds.

    Stopped mid-batch, the claims go back to the queue (WAITING) for another worker.
    """
    if take < 1:
        raise UserError(f"--take must be at least 1, got {take}")
    parent = _die_with_parent()
    attrs, recipe = study_recipe(storage, study)
    owner = new_owner()
    st = open_storage(storage)
    life = Heartbeat(st, st.get_study_id_from_name(study), owner)
    life.start()  # alive while it loads a big model too: the search keeps waiting
    try:
        lm, ev = build_evaluator(attrs, recipe, device, study)
        record = StudyRecord(storage, study, ev.fingerprint, ev.objective.name, ev.direction, attrs.get("units", []),
                             RunInfo(algo="worker", extra=dict(device=str(lm.masked.device))), create=False,
                             owner=owner)
        return _serve(record, ev, lm, take, idle_exit, log, parent)
    finally:
        life.stop(retire=True)  # gone on purpose: nobody should count on this worker


def _die_with_parent() -> int | None:
    """A ``--workers`` child: SIGTERM when the search that spawned it dies (Linux's
    PR_SET_PDEATHSIG; the SIGTERM handler releases the claims in hand), and the parent's pid,
    which the serving loop also polls (other systems, and a parent that died before prctl)."""
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit():
        return None
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(parent):
        raise UserError(f"the search that started this worker (pid {parent}) is gone")
    return int(parent)


def _serve(record: StudyRecord, ev, lm, take: int, idle_exit: float | None, log,
           parent: int | None = None) -> WorkerStats:
    owner, study = record.owner, record.study_name
    stats = WorkerStats(owner)
    log(f"worker {owner} ready on {lm.masked.device}: study {study!r}", flush=True)
    idle_since = time.monotonic()
    try:
        with ev.recording(record):
            while parent is None or os.getppid() == parent:  # orphaned: the search is gone, so stop
                taken = record.take(take)
                if not taken:
                    if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                        break
                    time.sleep(QUEUE_POLL_SECONDS)
                    continue
                start = time.perf_counter()
                for fid, masks in taken.items():
                    ev.score_claimed(masks, fid)
                    stats.scored += len(masks)
                stats.batches += 1
                stats.seconds += time.perf_counter() - start
                idle_since = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        record.close()
    log(f"worker {owner} scored {stats.scored} masks in {stats.batches} takes ({stats.seconds:.2f} s scoring)",
        flush=True)
    return stats


def stop_on_sigterm() -> None:
    """SIGTERM as Ctrl-C: release the claims in hand, report, exit cleanly."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


class LocalWorkers:
    """``dpopt search --workers N``: N worker processes on this machine, one per GPU when
    there are several, stopped when the search ends."""

    def __init__(self, storage: str, study: str, n: int, device: str = "cpu"):
        self.logs = [tempfile.NamedTemporaryFile("w+", prefix=f"dpopt-worker{i}-", suffix=".log", delete=False)
                     for i in range(n)]
        env = dict(os.environ)
        env[PARENT_ENV] = str(os.getpid())
        root = str(Path(__file__).resolve().parents[1])  # the same dpopt as this search
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        devices = _spread(device, n)
        if devices[0] == "cpu" and "OMP_NUM_THREADS" not in env:  # share the cores, don't oversubscribe them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        self.procs = [subprocess.Popen([sys.executable, "-m", "dpopt.cli", "worker", "--storage", storage,
                                        "--study", study, "--device", devices[i]],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                      for i, log in enumerate(self.logs)]

    def check(self) -> None:
        """Never wait on workers that are all gone: say why in one line."""
        if any([p.poll() is None for p in self.procs]):  # a list: poll (and so reap) every one
            return
        reason = ""
        for log in self.logs:
            log.flush()
            lines = [ln for ln in Path(log.name).read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                reason = lines[-1].removeprefix("dpopt: error: ")
                break
        raise UserError(f"all {len(self.procs)} local workers exited ({reason or 'no output'}); the queued masks "
                        "stay in the study")

    def stop(self, timeout: float = 30) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()
            with contextlib.suppress(OSError):
                os.unlink(log.name)


def _spread(device: str, n: int) -> list[str]:
    """One GPU per worker when the machine has several; else every worker on ``device``."""
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count()
        if count > 1:
            return [f"cuda:{i % count}" for i in range(n)]
    return [device] * n
