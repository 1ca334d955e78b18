"""Storage URLs, opening Optuna storages, and the one lock a study's writers take.

SQLite (the default) serialises writers with a lock file beside the database; for many
processes or machines give a PostgreSQL URL (an advisory lock) or ``journal:FILE``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Iterator

from ..errors import UserError, one_line

DEFAULT_STORAGE = "sqlite:///dpopt-studies.db"


def storage_kind(url: str) -> str:
    if url.startswith("journal:"):
        return "journal"
    return url.split(":", 1)[0].split("+", 1)[0]


def _sqlite_path(url: str) -> str | None:
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None
    return None if path in (None, "", ":memory:") else path


def check_storage_writable(url: str) -> None:
    """Refuse a storage that cannot be written before any model loads (a file URL's folder)."""
    path = url[len("journal:"):] if url.startswith("journal:") else _sqlite_path(url)
    if storage_kind(url) not in ("journal", "sqlite", "postgresql", "mysql", "oracle", "mssql"):
        raise UserError(f"--storage {url!r} is not a storage URL: give sqlite:///FILE, journal:FILE, "
                        "postgresql://..., or none")
    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"--storage {url}: {p} is a directory")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"--storage {url}: folder {folder} does not exist")
    if (p.exists() and not os.access(p, os.W_OK)) or not os.access(folder, os.W_OK):
        raise UserError(f"--storage {url}: {p} is not writable")


def open_storage(url: str):
    """An Optuna storage object for a dpopt storage URL; a bad URL is a UserError."""
    import optuna

    check_storage_writable(url)
    try:
        if url.startswith("journal:"):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            return JournalStorage(JournalFileBackend(str(Path(url[len("journal:"):]).expanduser())))
    except Exception as exc:
        raise UserError(f"cannot open storage {url}: {one_line(exc)}") from None
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        except Exception as exc:
            # several processes opening a fresh database race to create Optuna's tables: the
            # losers see "already exists" or a unique violation, and succeed on a retry
            if attempt == 4 or not any(w in str(exc) for w in ("already exists", "UniqueViolation", "duplicate key")):
                raise UserError(f"cannot open storage {url}: {one_line(exc)}") from None
            time.sleep(0.5 * (attempt + 1))


def _engine_kwargs(url: str) -> dict:
    if storage_kind(url) == "sqlite":  # several processes on one file: wait for the lock, don't fail
        return {"connect_args": {"timeout": 60}}
    if storage_kind(url) == "postgresql":
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


class _FileLock:
    """An exclusive ``flock`` on a file beside the database: one writer across processes."""

    def __init__(self, path: str):
        self.path = path

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        import fcntl

        with open(self.path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class _AdvisoryLock:
    """PostgreSQL's advisory lock (MySQL's GET_LOCK): one writer across machines."""

    def __init__(self, storage, name: str, kind: str):
        self.engine = storage.engine
        self.key = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big", signed=True)
        self.name, self.kind = name[:60], kind

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            if self.kind == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            else:
                conn.execute(text("SELECT GET_LOCK(:n, 600)"), {"n": self.name})
            try:
                yield
            finally:
                if self.kind == "postgresql":
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                else:
                    conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self.name})
                conn.commit()


def make_lock(url: str, storage, study_name: str):
    kind = storage_kind(url)
    if kind == "journal":
        return _FileLock(str(Path(url[len("journal:"):]).expanduser()) + ".dpopt-lock")
    if kind == "sqlite" and _sqlite_path(url):
        return _FileLock(str(Path(_sqlite_path(url)).expanduser()) + ".dpopt-lock")
    if kind in ("postgresql", "mysql"):
        return _AdvisoryLock(storage, f"dpopt:{study_name}", kind)
    lock = threading.Lock()

    @contextlib.contextmanager
    def local() -> Iterator[None]:  # in-memory SQLite and other engines: one process only
        with lock:
            yield

    return local
