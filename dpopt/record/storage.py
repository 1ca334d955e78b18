"""Storage URLs and opening Optuna storages (the lock a study's writers take: :mod:`.lease`)."""
from __future__ import annotations

import os
import time
from pathlib import Path

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


def storage_errors() -> tuple[type[BaseException], ...]:
    """What a failing storage raises (disk full, server gone, file vanished): reported as one line."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    return OSError, SQLAlchemyError, optuna.exceptions.StorageInternalError


def root_cause(exc: BaseException) -> str:
    """Optuna wraps the driver's error ("database or disk is full") in a generic one; name the driver's."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return one_line(exc)


def require_existing(url: str) -> None:
    """Refuse a SQLite or journal storage whose file does not exist, without creating it
    (``dpopt worker``, ``dpopt dashboard``: they read a study, they never start one)."""
    path = url[len("journal:"):] if url.startswith("journal:") else _sqlite_path(url)
    if path is not None and not Path(path).expanduser().is_file():
        raise UserError(f"no study storage at {url}: {path} does not exist")
