"""The queue side of a study record: who is alive to score, and a worker's take.

A search in queue mode creates WAITING trials; ``dpopt worker`` processes take them here
with Optuna's atomic WAITING->RUNNING transition (see :mod:`dpopt.record.worker`).
"""
from __future__ import annotations

import math
import time
from typing import Any

from ..errors import UserError
from ..genome import LayerMask
from .liveness import HB_PREFIX, lease_seconds


def trial_id(trial) -> int:
    """A FrozenTrial's storage id. Optuna keeps it private (``_trial_id``) yet its storage API
    addresses trials by it; the public detour (``get_trial_id_from_study_id_trial_number``)
    costs a query per trial inside the claim lock, so this is the one place that reads it."""
    return trial._trial_id



class QueueMixin:
    """:class:`dpopt.record.StudyRecord`'s queue methods (it supplies the storage, the lock, the owner)."""

    def live_workers(self) -> list[str]:
        """Owners other than this process whose heartbeat is inside the lease."""
        now, lease = time.time(), lease_seconds()
        attrs = self.storage.get_study_system_attrs(self.study_id)
        return [k[len(HB_PREFIX):] for k, v in attrs.items()
                if k.startswith(HB_PREFIX) and k[len(HB_PREFIX):] != self.owner and now - float(v) <= lease]

    def check_workers(self) -> None:
        """Queue mode: never wait forever. The monitor (spawned workers) decides first; without
        one, no worker heartbeat for the whole lease while masks wait is a UserError."""
        if self.monitor is not None:
            self.monitor()
            return
        now = time.time()
        if self.live_workers():
            self._last_worker_seen = now
            return
        seen = self._last_worker_seen
        if seen is None:
            self._last_worker_seen = seen = now
        if now - seen > lease_seconds():
            raise UserError(f"no dpopt worker has been alive on study {self.study_name!r} for {lease_seconds():g} s "
                            f"(DPOPT_LEASE_SECONDS) and masks are waiting; start one with: dpopt worker --storage "
                            f"{self.url} --study {self.study_name} (the queued masks stay in the study)")

    def take(self, limit: int) -> dict[Any, list[LayerMask]]:
        """A worker takes up to ``limit`` WAITING trials (atomically: each goes to one worker),
        grouped by fidelity; its share is the queue split over the live workers, so a
        generation spreads over all of them and each still scores several at once."""
        from optuna.trial import TrialState

        taken: dict[Any, list[LayerMask]] = {}
        with self._storage_errors():
            self._locked(self._take_some, limit, taken)  # again after a lost lock: ``taken`` keeps what it got
            if taken:
                self.heartbeat.start()
        return taken

    def _take_some(self, limit: int, taken: dict[Any, list[LayerMask]]) -> None:
        from optuna.trial import TrialState

        waiting = self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            return
        limit -= sum(len(v) for v in taken.values())
        share = max(1, math.ceil(len(waiting) / (len(self.live_workers()) + 1)))
        for t in sorted(waiting, key=lambda t: t.number)[: min(limit, share)]:
            self._lock.guard()
            mask = self.mask_of(t.params)
            if mask is None or not self.storage.set_trial_state_values(trial_id(t), TrialState.RUNNING):
                continue
            fid = t.user_attrs.get("fidelity")
            # the owner last: a worker killed between these writes leaves a trial without an
            # owner (stale at once, so re-queued) or owned by the last of its "workers", never
            # owned by a worker its record does not name
            self.storage.set_trial_user_attr(trial_id(t), "workers", list(t.user_attrs.get("workers", [])) + [self.owner])
            self.storage.set_trial_system_attr(trial_id(t), "dpopt:owner", self.owner)
            self._mine[(mask.key(), fid)] = trial_id(t)
            taken.setdefault(fid, []).append(mask)
