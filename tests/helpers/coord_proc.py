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
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Coordinator:
        args = [
            "serve", "--db", str(self.db), "--port", str(self.port), "--prefix", self.prefix,
            *self.extra,
        ]  # fmt: skip
        self.log = self.log or self.db.with_suffix(".log")
        out = self.log.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([*FEDMQ, *args], stdout=out, stderr=out, cwd=REPO, env=env)
        return self

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


def wait_until(predicate: Any, timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
