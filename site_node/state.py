"""Small persisted site state: the session counter and what the daemon is doing now.

Kept in one JSON file written atomically (temp file, fsync, rename) so ``fedmq-site
status`` can read it with the daemon and the broker down. The per-site ``seq`` lives in
the outbox database instead, because it must commit in the same transaction as its row;
so does the stream ``epoch``, created with it. A write that fails (a full disk) is logged
and the daemon goes on with the state in memory: the file catches up at the next write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil

from schemas import now_ms

__all__ = ["RuntimeState", "SiteState", "pid_alive"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeState:
    """What the state file holds."""

    session: int = 0
    connected: bool = False
    pid: int = 0
    updated_ms: int = 0
    connected_since_ms: int = 0


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (0 means none)."""
    if pid <= 0:
        return False
    # Not os.kill(pid, 0): on Windows signal 0 is CTRL_C_EVENT, which interrupts the
    # process instead of probing it. psutil probes on every platform.
    return bool(psutil.pid_exists(pid))


class SiteState:
    """The state file of one data dir; safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._state = self.read(self.path)

    @staticmethod
    def read(path: Path) -> RuntimeState:
        """Read a state file; a missing or damaged file reads as the defaults."""
        try:
            data = json.loads(Path(path).read_text())
            return RuntimeState(
                session=int(data.get("session", 0)),
                connected=bool(data.get("connected", False)),
                pid=int(data.get("pid", 0)),
                updated_ms=int(data.get("updated_ms", 0)),
                connected_since_ms=int(data.get("connected_since_ms", 0)),
            )
        except (OSError, ValueError, TypeError, AttributeError):
            return RuntimeState()

    @property
    def current(self) -> RuntimeState:
        return self._state

    def next_session(self) -> int:
        """Allocate and persist the next session number (one per connection attempt)."""
        with self._lock:
            self._write(replace(self._state, session=self._state.session + 1, pid=os.getpid()))
            return self._state.session

    def set_connected(self, connected: bool) -> None:
        """Record whether the daemon holds a broker connection now."""
        with self._lock:
            now = now_ms()
            self._write(
                replace(
                    self._state,
                    connected=connected,
                    pid=os.getpid(),
                    connected_since_ms=now if connected else 0,
                )
            )

    def mark_stopped(self) -> None:
        """A clean exit: not connected, no pid."""
        with self._lock:
            self._write(replace(self._state, connected=False, pid=0, connected_since_ms=0))

    def _write(self, state: RuntimeState) -> None:
        state = replace(state, updated_ms=now_ms())
        self._state = state
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w") as fh:
                json.dump(asdict(state), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write %s (%s); keeping the state in memory", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
