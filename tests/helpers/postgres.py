"""A real PostgreSQL server for tests: Debian's binaries, a temporary data directory, a
free loopback port, a unix socket in the same directory; a fresh database per test.

The server runs as the user who runs the tests, or, under root (CI), as ``postgres``
(created by Debian's package; ``nobody`` when it is missing): PostgreSQL refuses to run as
root. Readiness is a connection that succeeds (``wait_for``), never a sleep.

Use the fixtures from a test module::

    (tests/conftest.py makes pg_server and pg_url available to every test module)
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.broker import free_port
from tests.helpers.wait import wait_for

__all__ = ["PgServer", "find_pg_bin", "pg_server", "pg_url"]

INSTALL_HINT = (
    "PostgreSQL is not installed: run `apt-get install -y postgresql` (Debian/Ubuntu; "
    ".ci/setup does it); the PostgreSQL store tests need a real server"
)
SUPERUSER = "fedmq"


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` holding ``initdb`` and ``postgres``, or
    the directory of a ``postgres`` on PATH (a non-Debian install)."""
    found = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for d in reversed(found):
        if (d / "initdb").exists() and (d / "postgres").exists():
            return d
    on_path = shutil.which("postgres")
    if on_path and (Path(on_path).resolve().parent / "initdb").exists():
        return Path(on_path).resolve().parent
    return None


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


@dataclass
class PgServer:
    """One PostgreSQL cluster in ``workdir``; ``start``/``stop``; ``create_db`` per test.

    ``durable`` keeps PostgreSQL's defaults (fsync, synchronous_commit: what a benchmark
    compares with SQLite's synchronous=FULL); without it the tests run with fsync off.
    """

    workdir: Path
    durable: bool = False
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        bindir = find_pg_bin()
        if bindir is None:
            raise RuntimeError(INSTALL_HINT)
        self.bindir = bindir
        self.data = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        self._as = _run_as()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def _own(self, path: Path) -> None:
        if self._as:
            os.chown(path, self._as["user"], self._as["group"])

    def init(self) -> None:
        self._own(self.workdir)
        subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
             "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True, cwd=self.workdir, **self._as,
        )  # fmt: skip

    def start(self) -> None:
        if not self.data.exists():
            self.init()
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.workdir),
            "max_connections": "100",
            "shared_buffers": "64MB" if self.durable else "32MB",
            # Files in the data directory, not /dev/shm (small in containers).
            "dynamic_shared_memory_type": "mmap",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        args = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for k, v in settings.items():
            args += ["-c", f"{k}={v}"]
        log = open(self.log, "ab")  # noqa: SIM115 (the server's whole life)
        self._own(self.log)
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, **self._as
        )
        log.close()
        wait_for(self._ready, timeout=60, what=f"PostgreSQL on port {self.port} ({self.log})")

    def _ready(self) -> bool:
        import psycopg

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"postgres exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}"
            )
        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def create_db(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_db(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def backend_pids(self) -> list[int]:
        """The server's processes (postmaster and its children): for CPU accounting."""
        if self.proc is None:
            return []
        pids = [self.proc.pid]
        with contextlib.suppress(OSError):
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    with contextlib.suppress(OSError):
                        stat = Path(f"/proc/{entry}/stat").read_text()
                        ppid = int(stat.rsplit(")", 1)[1].split()[1])
                        if ppid == self.proc.pid:
                            pids.append(int(entry))
        return pids

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it does not go."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def _tmp_root() -> Path:
    # pytest's tmp dirs are 0700 root's under root: the server user could not enter them.
    return Path(tempfile.mkdtemp(prefix="fedmq-pg-"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL for the session (per xdist worker); fails with the install hint."""
    if find_pg_bin() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    root = _tmp_root()
    server = PgServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh database on the session's server, dropped after the test."""
    url = pg_server.create_db()
    yield url
    with contextlib.suppress(Exception):
        pg_server.drop_db(url)
