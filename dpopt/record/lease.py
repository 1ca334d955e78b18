"""The one lock a study's writers take: a lease, so a frozen holder cannot stop everyone.

A lock held by the operating system (``flock``) or by a database session (PostgreSQL's
advisory lock) is held for as long as its holder lives: a process frozen inside the
critical section (SIGSTOP, a debugger, a swapped-out VM) stops every other process on the
study for as long as it stays frozen. A lease holds no resource while nobody runs: it is a
record, ``owner`` and ``expires``, taken with an atomic compare-and-set (``O_EXCL``
create of a lock file beside a SQLite or journal file; a conditional ``UPDATE``/``INSERT``
of a row in the ``dpopt_locks`` table on PostgreSQL and MySQL, each statement its own
transaction). A waiter polls; once the lease has expired (or, on the same host, its
holder's pid is gone) it takes it over. So a frozen holder delays others by one lease
(``DPOPT_LEASE_SECONDS``) at most.

A holder that was frozen past its lease must not write as if it still held the lock: the
critical sections call :meth:`guard` before each write, which renews the lease once a third
of it has passed and raises :class:`LeaseLost` when another process took it meanwhile; the
caller then starts its section over. A holder frozen between ``guard`` and its very next
write can still overlap one write of the new holder; the worst that does is a duplicate
trial for one (mask, fidelity), which the record reads as one evaluation.
"""
from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

from .liveness import lease_seconds, new_owner, pid_alive
from .storage import _sqlite_path, storage_kind

MIN_LOCK_LEASE = 1.0  # a lock lease of 0 (a test making claims stale at once) would let every waiter steal it


class LeaseLost(Exception):
    """This process was stalled past its lease and another one took the lock over."""


def lock_lease() -> float:
    return max(lease_seconds(), MIN_LOCK_LEASE)


def _owner_dead(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid = int(rest.partition(":")[0] or 0) if rest.partition(":")[0].isdigit() else 0
    return host == socket.gethostname() and pid > 0 and not pid_alive(pid)


class _Lease:
    """Acquire by polling ``_try``; ``guard`` renews or reports the loss; release drops it."""

    def __init__(self):
        self.owner = new_owner()
        self._threads = threading.Lock()  # threads of one process queue here, not on the shared record
        self._since = 0.0  # time.monotonic() of the last take or renewal

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._threads:
            delay = 0.005
            while not self._try(time.time()):
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.1)
            self._since = time.monotonic()
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    self._release()

    def guard(self) -> None:
        """Before a write inside the lock: renew once a third of the lease has passed; raise
        LeaseLost if this process no longer holds it (it was frozen, and it was taken over)."""
        if time.monotonic() - self._since < lock_lease() / 3:
            return
        if not self._renew(time.time() + lock_lease()):
            raise LeaseLost(f"lost the study lock ({self.owner}): stalled past its lease of {lock_lease():g} s")
        self._since = time.monotonic()

    def _record(self, now: float) -> str:
        return f"{self.owner} {now + lock_lease():020.3f}\n"

    @staticmethod
    def _stale(owner: str | None, expires: float, now: float) -> bool:
        return expires < now or (owner is not None and _owner_dead(owner))

    def _try(self, now: float) -> bool:
        raise NotImplementedError

    def _renew(self, expires: float) -> bool:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


class FileLease(_Lease):
    """A lock file beside a SQLite database or a journal, created with ``O_EXCL``.

    Taking over an expired one renames it aside, then checks that what moved is the file
    judged stale (same inode); a fresh lock moved by mistake is linked back."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _read(self) -> tuple[str | None, float, int] | None:
        """(owner, expires, inode) of the lock file, or None if there is none."""
        try:
            with open(self.path) as fh:
                st = os.fstat(fh.fileno())
                text = fh.read()
        except FileNotFoundError:
            return None
        owner, _, expires = text.strip().rpartition(" ")
        try:
            return owner or None, float(expires), st.st_ino
        except ValueError:  # being written this instant, or its writer died before writing
            return None, st.st_mtime + lock_lease(), st.st_ino

    def _try(self, now: float) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._take_over_if_stale(now)
            return False
        try:
            os.write(fd, self._record(now).encode())
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise
        os.close(fd)
        return True

    def _take_over_if_stale(self, now: float) -> None:
        held = self._read()
        if held is None or not self._stale(held[0], held[1], now):
            return
        aside = f"{self.path}.{uuid.uuid4().hex[:8]}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if os.stat(aside).st_ino != held[2]:  # a fresh lock was taken meanwhile: give it back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        with contextlib.suppress(OSError):
            os.unlink(aside)

    def _mine(self) -> bool:
        held = self._read()
        return held is not None and held[0] == self.owner

    def _renew(self, expires: float) -> bool:
        if not self._mine():
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except FileNotFoundError:
            return False
        try:
            os.write(fd, f"{self.owner} {expires:020.3f}\n".encode())  # same length: overwritten in place
        finally:
            os.close(fd)
        return self._mine()

    def _release(self) -> None:
        if self._mine():
            os.unlink(self.path)


class RowLease(_Lease):
    """A row of the ``dpopt_locks`` table in the study's own database (PostgreSQL, MySQL)."""

    def __init__(self, engine, name: str):
        super().__init__()
        self.engine, self.name = engine, name[:200]
        self._create_table()

    def _create_table(self) -> None:
        from sqlalchemy import Column, Float, MetaData, String, Table

        self.table = Table("dpopt_locks", MetaData(), Column("name", String(255), primary_key=True),
                           Column("owner", String(255), nullable=False), Column("expires", Float, nullable=False))
        for attempt in range(5):
            try:
                self.table.create(self.engine, checkfirst=True)
                return
            except Exception:  # several processes create it at once: the losers find it there
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _execute(self, statement):
        with self.engine.begin() as conn:
            return conn.execute(statement)

    def _try(self, now: float) -> bool:
        from sqlalchemy import and_, exc, or_, select

        t, expires = self.table, now + lock_lease()
        free = and_(t.c.name == self.name, or_(t.c.expires < now, t.c.owner == self.owner))
        taken = self._execute(t.update().where(free).values(owner=self.owner, expires=expires))
        if taken.rowcount == 1:
            return True
        row = self._execute(select(t.c.owner, t.c.expires).where(t.c.name == self.name)).first()
        if row is None:
            try:
                self._execute(t.insert().values(name=self.name, owner=self.owner, expires=expires))
                return True
            except exc.IntegrityError:  # another process inserted it first
                return False
        if _owner_dead(row.owner):  # its pid on this host is gone: no need to wait out the lease
            return self._execute(t.update().where(and_(t.c.name == self.name, t.c.owner == row.owner,
                                                       t.c.expires == row.expires))
                                 .values(owner=self.owner, expires=expires)).rowcount == 1
        return False

    def _renew(self, expires: float) -> bool:
        t = self.table
        return self._execute(t.update().where((t.c.name == self.name) & (t.c.owner == self.owner))
                             .values(expires=expires)).rowcount == 1

    def _release(self) -> None:
        t = self.table
        self._execute(t.delete().where((t.c.name == self.name) & (t.c.owner == self.owner)))


class _LocalLock:
    """In-memory SQLite and other engines: one process only, so a thread lock will do."""

    def __init__(self):
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            yield

    def guard(self) -> None:
        pass


def make_lock(url: str, storage, study_name: str):
    """The lease for ``study_name`` in the storage at ``url`` (see the module docstring)."""
    kind = storage_kind(url)
    if kind == "journal":
        return FileLease(str(Path(url[len("journal:"):]).expanduser()) + ".dpopt-lock")
    if kind == "sqlite" and _sqlite_path(url):
        return FileLease(str(Path(_sqlite_path(url)).expanduser()) + ".dpopt-lock")
    if kind in ("postgresql", "mysql"):
        return RowLease(storage.engine, f"dpopt:{study_name}")
    return _LocalLock()
