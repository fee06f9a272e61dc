"""Run the real ``fedmq`` CLI in subprocesses: the ``serve`` daemon and read commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FEDMQ = [sys.executable, "-c", "from coordinator.cli import main; main()"]


def fedmq(*args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one ``fedmq`` command to completion and return it."""
    proc = subprocess.run(
        [*FEDMQ, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fedmq {' '.join(args)} -> {proc.returncode}: {proc.stderr}")
    return proc


def sites_json(db: Path) -> dict[str, dict[str, Any]]:
    """``fedmq sites --json`` as a dict keyed by site id."""
    out = fedmq("sites", "--db", str(db), "--json").stdout
    return {row["site"]: row for row in json.loads(out)["sites"]}


@dataclass
class Coordinator:
    """``fedmq serve`` as a subprocess; ``kill()`` is kill -9."""

    db: Path
    port: int
    prefix: str
    extra: tuple[str, ...] = ()
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    cwd: Path = REPO  # another checkout runs its own code (benchmarks: old vs new)

    def start(self) -> Coordinator:
        args = [
            "serve", "--db", str(self.db), "--port", str(self.port), "--prefix", self.prefix,
            *self.extra,
        ]  # fmt: skip
        self.log = self.log or self.db.with_suffix(".log")
        out = self.log.open("ab")
        # The control API on a free port (announced in the database): tests run in parallel.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FEDMQ_HTTP": "127.0.0.1:0", **self.env}
        self.proc = subprocess.Popen([*FEDMQ, *args], stdout=out, stderr=out, cwd=self.cwd, env=env)
        return self

    def wait_ready(self, timeout: float = 30) -> Coordinator:
        """Until the database answers ``fedmq sites`` (created and migrated) and, on a
        broker a test client can reach without credentials, serve is subscribed: it
        subscribes before it publishes its retained online status on each connection, so
        that status with this run's session means nothing published from now on is missed.
        """

        def ready() -> bool:
            assert self.alive(), f"fedmq serve exited: {self.log_text()[-2000:]}"
            return (
                self.db.exists()
                and fedmq("sites", "--db", str(self.db), check=False).returncode == 0
            )

        wait_until(ready, timeout, "fedmq serve ready", step=0.2)
        self._wait_subscribed(timeout)
        return self

    def _wait_subscribed(self, timeout: float) -> None:
        import sqlite3

        from tests.helpers.mqtt import TestClient

        client = TestClient(self.port)
        try:
            client.connect(timeout=5)
        except Exception:  # a secured broker: the tests using it wait on their own terms
            client.close()
            return
        if getattr(client.connect_rc, "is_failure", False):
            client.close()
            return

        def session() -> int:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = 'session'").fetchone()
            finally:
                conn.close()
            return int(row[0]) if row else 0

        try:
            client.subscribe(f"{self.prefix}/coordinator/status")

            def online(m: Any) -> bool:
                try:
                    body = json.loads(m.payload)
                except ValueError:
                    return False
                # serve counts its session before it connects: read it when the status
                # arrives, not before (a fresh database may not have counted it yet).
                return body.get("state") == "online" and body.get("session") == session()

            client.expect(online, timeout=timeout)
        finally:
            client.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def start_fake_site(port: int, prefix: str, site: str, workdir: Path, *args: str) -> Any:
    """``python -m tests.helpers.fake_site`` as a subprocess (state file in ``workdir``)."""
    cmd = [sys.executable, "-m", "tests.helpers.fake_site", "--port", str(port)]
    cmd += ["--prefix", prefix, "--site", site, "--state", str(workdir / f"{site}.json"), *args]
    log = (workdir / f"{site}.log").open("ab")
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log)


def site_state(workdir: Path, site: str) -> dict[str, int] | None:
    """What a fake site last reported about its outbox (None before its first report)."""
    try:
        return json.loads((workdir / f"{site}.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def wait_until(predicate: Any, timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
