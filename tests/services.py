"""Real services for tests: a throwaway PostgreSQL server and headless Chromium.

Both come from Debian's packages (``apt-get install postgresql chromium``; ``.ci/run`` installs
them). A test that needs one and cannot have it fails in CI (``CI=true``), because there a
missing service means the set-up is broken; elsewhere it skips, saying why in one line.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
``postgres`` system user that the package creates, in a directory under /tmp that user owns.
It listens on 127.0.0.1 only, on a free port, trusts local connections, and skips fsync:
nothing in it outlives the test session.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

PG_USER = "dpopt"  # the database superuser initdb creates; not an OS user


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def service_missing(reason: str):
    """Fail in CI, skip elsewhere; ``reason`` is the one line either shows."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: real services are required; .ci/run installs them)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    """The newest Debian PostgreSQL bin directory (/usr/lib/postgresql/<major>/bin)."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if not found:
        return None
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)


def _server_os_user() -> str | None:
    """None when we are not root (the server runs as us); else a non-root user to run it as."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:  # binaries without the package's user: make one
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
                       check=True, capture_output=True)
    return "postgres"


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, on 127.0.0.1:``port``, stopped by :meth:`stop`."""

    def __init__(self, bindir: Path, os_user: str | None):
        self.bindir = bindir
        self.os_user = os_user
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dpopt-pg-"))
        if os_user is not None:
            info = pwd.getpwnam(os_user)
            os.chown(self.root, info.pw_uid, info.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.started = False

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], user=self.os_user, cwd=self.root,
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        r = self._run("initdb", "-D", str(self.data), "-U", PG_USER, "-A", "trust", "-E", "UTF8", "--no-sync")
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {_last_line(r.stderr or r.stdout)}")
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start",
                      timeout=90)
        if r.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {_last_line(log or r.stderr or r.stdout)}")
        self.started = True

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL (what Optuna's RDBStorage takes)."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        r = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, name)
        if r.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {_last_line(r.stderr)}")
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


@pytest.fixture(scope="session")
def postgres_server():
    """The session's PostgreSQL server (:class:`PostgresServer`); most tests want ``postgres_url``."""
    bindir = _pg_bindir()
    if bindir is None:
        service_missing("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                        "apt-get install postgresql")
    try:
        import psycopg2  # noqa: F401  (Optuna's RDBStorage needs the driver)
    except ImportError:
        service_missing("psycopg2 is not installed: pip install psycopg2-binary")
    server = None
    try:
        server = PostgresServer(bindir, _server_os_user())
        server.start()
    except Exception as exc:  # noqa: BLE001  (any reason it cannot start is reported the same way)
        if server is not None:
            server.stop()
        service_missing(f"PostgreSQL could not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """SQLAlchemy URL of one database on the session's server, shared by every test that asks."""
    return postgres_server.create_database("dpopt_test")


@pytest.fixture
def fresh_postgres_url(postgres_server) -> str:
    """SQLAlchemy URL of a new empty database for this test alone."""
    return postgres_server.create_database()


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium; see :func:`screenshot`."""
    exe = _find_chromium()
    if exe is None:
        service_missing("Chromium is not installed: apt-get install chromium")
    return exe


def screenshot(chromium_exe: str, url: str, out: Path, size: str = "1400,1000", budget_ms: int = 10000,
               timeout: float = 90) -> Path:
    """Render ``url`` headless and save a PNG; ``budget_ms`` of virtual time lets a JS app draw."""
    out = Path(out)
    profile = tempfile.mkdtemp(prefix="dpopt-chromium-")
    try:
        r = subprocess.run([chromium_exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={size}",
                            f"--virtual-time-budget={budget_ms}", url],
                           capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium screenshot failed (exit {r.returncode}): {_last_line(r.stderr)}")
    return out


def wait_for(predicate, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; that value, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
