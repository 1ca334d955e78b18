"""optuna-dashboard on a dpopt study storage, served from this Python process.

dpopt serves optuna-dashboard's public WSGI app itself instead of launching the
``optuna-dashboard`` executable: a venv's ``bin/dpopt`` then works without the venv on PATH,
and the storage is opened the way every other dpopt command opens it (``journal:FILE``
included), so a storage that does not exist is one clear line before any server starts
rather than an empty dashboard or a traceback from inside it.
"""
from __future__ import annotations

import os
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..errors import UserError
from .storage import open_storage


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """The browser polls several API routes at once; one thread each, none kept at exit."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # one line per poll would bury the URL
        pass


def open_existing_storage(url: str):
    """The Optuna storage at ``url``, or UserError when there is none to show."""
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        if not os.path.isfile(path):
            raise UserError(f"no study storage at {url}: {path} does not exist")
        return open_storage(url)
    if "://" not in url:
        raise UserError(f"storage {url!r} is not a URL: give sqlite:///FILE, postgresql://..., or journal:FILE")
    from optuna.storages import RDBStorage
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001  (SQLAlchemy's parse errors have no common base we can name)
        raise UserError(f"storage {url!r} is not a database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and os.path.isfile(parsed.database)):
        raise UserError(f"no study storage at {url}: {parsed.database or '(in-memory)'} does not exist")
    try:
        storage = RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
        storage.get_all_studies()
    except Exception as exc:  # noqa: BLE001  (driver missing, server down, no Optuna tables: all one message)
        raise UserError(f"cannot open study storage {url}: {_root_cause(exc)}") from None
    return storage


def _root_cause(exc: BaseException) -> str:
    """Optuna wraps the driver's error ("connection refused") in a generic one; show the driver's."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def serve_dashboard(storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> int:
    """Print the dashboard's URL on stdout, then serve it until interrupted; port 0 takes a free one."""
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise UserError(f"optuna-dashboard is not installed in {sys.executable}: pip install optuna-dashboard") from None
    from .artifacts import artifact_store

    app = wsgi(open_existing_storage(storage_url), artifact_store=artifact_store(storage_url))
    try:
        httpd = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    print(f"http://{host}:{httpd.server_port}/dashboard", flush=True)
    print(f"optuna-dashboard on {storage_url}; Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0
