"""Who holds a claim and whether it is still alive: owners, leases and the heartbeat.

A claim's owner is ``host:pid:nonce``. On the same host a dead pid (or a zombie) frees its
claims at once; elsewhere the owner's heartbeat, a study system attribute, must be younger
than the lease (``DPOPT_LEASE_SECONDS``).
"""
from __future__ import annotations

import os
import socket
import uuid

HEARTBEAT_SECONDS = 5.0



def lease_seconds() -> float:
    """How long a claim survives without a heartbeat before another process adopts it."""
    return float(os.environ.get("DPOPT_LEASE_SECONDS", "60"))


def heartbeat_seconds() -> float:
    """Beat well inside the lease, so a live owner never looks stale under a short lease."""
    return max(0.05, min(HEARTBEAT_SECONDS, lease_seconds() / 4))


HB_PREFIX = "dpopt:hb:"


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _proc_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` ("Z": zombie); None without /proc (macOS) or
    once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """A zombie counts as dead: a killed ``--workers`` child stays one until the search reaps
    it, and its claims would otherwise wait out the whole lease."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) != "Z"  # no /proc: trust kill(0)


class Heartbeat:
    """``dpopt:hb:<owner>`` on the study, beaten from a thread while ``active()`` says so.

    The one heartbeat of a search's claims and of a worker's whole life: a claim whose owner
    stops beating for the lease is adopted by another process.
    """

    def __init__(self, storage, study_id: int, owner: str, active=lambda: True):
        import threading

        self.storage, self.study_id, self.key, self.active = storage, study_id, f"{HB_PREFIX}{owner}", active
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        import time

        self.storage.set_study_system_attr(self.study_id, self.key, time.time())

    def start(self) -> None:
        """Beat now and keep beating (idempotent)."""
        import contextlib
        import threading

        self.beat()
        if self._thread is not None:
            return

        def run() -> None:
            while not self._stop.wait(heartbeat_seconds()):
                if self.active():
                    with contextlib.suppress(Exception):
                        self.beat()

        self._thread = threading.Thread(target=run, name="dpopt-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, retire: bool = False) -> None:
        """Stop beating; ``retire`` zeroes the beat, so nobody counts on this owner any more."""
        import contextlib

        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if retire:
            with contextlib.suppress(Exception):
                self.storage.set_study_system_attr(self.study_id, self.key, 0.0)
