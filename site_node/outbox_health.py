"""Whether the outbox can store, and what it lost before a ``seq`` (thread-safe).

A full disk must not stop a site: the outbox keeps running, refuses what it cannot store,
counts the samples lost (``Heartbeat.samples_dropped``), says why (``outbox_error``) and
logs the failure, every ``report_every_s`` while it lasts and once when it ends.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

__all__ = ["OutboxHealth", "OutboxRefused", "describe"]

log = logging.getLogger(__name__)

_MAX_ERROR = 200  # Heartbeat.outbox_error's bound
_SQLITE_FULL = 13


class OutboxRefused(RuntimeError):
    """The outbox could not take a message (storage failing, or its queue full)."""


def describe(exc: BaseException) -> str:
    """A short reason for the heartbeat: ``disk full: database or disk is full``."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.Error) and (
        (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == _SQLITE_FULL or "full" in text.lower()
    ):
        return f"disk full: {text}"[:_MAX_ERROR]
    return f"storage error: {text}"[:_MAX_ERROR]


class OutboxHealth:
    """Counters and the current storage error; any thread may call any method."""

    def __init__(
        self, report_every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._every = report_every_s
        self.samples_dropped = 0
        self.messages_dropped = 0
        self.error: str | None = None
        self._since = 0.0
        self._reported = 0.0
        self._unreported = [0, 0]  # samples, messages dropped since the last log line

    def dropped(self, samples: int, why: str) -> None:
        """Count one message of ``samples`` samples lost before it got a seq."""
        now = self._clock()
        with self._lock:
            self.samples_dropped += samples
            self.messages_dropped += 1
            self._unreported[0] += samples
            self._unreported[1] += 1
            if now - self._reported < self._every:
                return
            self._reported = now
            samples, messages = self._unreported
            self._unreported = [0, 0]
        log.warning(
            "outbox dropped %d message(s) with %d sample(s) before storing them: %s "
            "(%d samples lost since start)",
            messages,
            samples,
            why,
            self.samples_dropped,
        )

    def failed(self, exc: BaseException) -> str:
        """Storage failed; returns the reason. Logs at error when the failure starts."""
        reason = describe(exc)
        with self._lock:
            first = self.error is None
            self.error = reason
            if first:
                self._since = self._clock()
        if first:
            log.error("outbox cannot store (%s): refusing new telemetry until it can", reason)
        return reason

    def ok(self) -> None:
        """Storage works (again); logs the recovery once."""
        with self._lock:
            if self.error is None:
                return
            reason, self.error = self.error, None
            lasted = self._clock() - self._since
            samples, messages = self._unreported
            self._unreported = [0, 0]
            self._reported = 0.0
        log.warning(
            "outbox storage recovered after %.1f s (%s); %d sample(s) in %d message(s) "
            "dropped since the last report, %d since start",
            lasted,
            reason,
            samples,
            messages,
            self.samples_dropped,
        )
