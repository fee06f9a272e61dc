"""Site liveness: online, stale or offline (see docs/architecture.md, "Liveness").

* online: retained status online and a heartbeat within ``PATIENCE x interval_s``;
* stale: status online but heartbeats stopped (e.g. a dead bridge, a frozen process);
* offline: Last Will or clean shutdown. An offline whose ``session`` is older than the
  site's current one is a late Will of an earlier connection and is ignored.

:func:`evaluate` is pure and imports nothing heavy: ``fedmq sites`` uses it at read time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from coordinator.store import EventRow, SiteRecord
from fedmq_runtime.clock import now_ms

__all__ = ["STATES", "LivenessChecker", "SiteLiveness", "evaluate"]

log = logging.getLogger(__name__)

STATES = ("online", "stale", "offline")


def evaluate(
    status: str | None, last_alive: int, interval_s: float, patience: float, now: int
) -> tuple[str, str]:
    """Return (state, reason) for a site; all times are epoch ms."""
    if status != "online":
        return "offline", "status offline" if status == "offline" else "no status received"
    limit_ms = patience * interval_s * 1000
    age_ms = now - last_alive
    if age_ms <= limit_ms:
        return "online", "status online, heartbeat within patience"
    return "stale", f"no heartbeat for {age_ms / 1000:.1f}s (> {patience:g} x {interval_s:g}s)"


class SiteLiveness:
    """Applies status and heartbeats to site records; returns the events to store."""

    def __init__(self, patience: float) -> None:
        self.patience = patience

    def on_status(
        self, rec: SiteRecord, state: str, session: int, at: int, reason: str | None = None
    ) -> list[EventRow]:
        if session < rec.session:
            why = f"late {state} of session {session} < current {rec.session}: ignored"
            log.info("site %s: %s", rec.site, why)
            return [EventRow(rec.site, at, "ignored_status", rec.state, rec.state, why, session)]
        rec.session = session
        rec.status = state
        if state == "online":
            rec.last_alive = at
        return self._transition(rec, at, reason)

    def on_heartbeat(
        self, rec: SiteRecord, session: int, interval_s: float, at: int
    ) -> list[EventRow]:
        if session < rec.session:
            return []
        events: list[EventRow] = []
        if session > rec.session or rec.status is None:
            # A heartbeat of a newer connection means it is online even if its retained
            # status has not reached us (brokers without retained wildcard delivery).
            rec.session, rec.status = session, "online"
        rec.interval_s = interval_s
        rec.last_alive = at
        events += self._transition(rec, at, None)
        return events

    def refresh(self, rec: SiteRecord, now: int) -> list[EventRow]:
        """Re-evaluate with the clock (online -> stale when heartbeats stop)."""
        return self._transition(rec, now, None)

    def _transition(self, rec: SiteRecord, at: int, reason: str | None) -> list[EventRow]:
        state, why = evaluate(rec.status, rec.last_alive, rec.interval_s, self.patience, at)
        evaluated = bool(rec.state_reason)  # a new record has never been evaluated
        if state == rec.state and evaluated:
            return []
        why = reason or why
        old = rec.state if evaluated else None
        rec.state, rec.state_reason, rec.state_since = state, why, at
        log.info("site %s: %s -> %s (%s)", rec.site, old, state, why)
        return [EventRow(rec.site, at, "state", old, state, why, rec.session)]


class LivenessChecker:
    """Calls ``tick(now)`` every ``interval_s`` from its own thread until stopped."""

    def __init__(
        self,
        tick: Callable[[int], None],
        interval_s: float = 0.5,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.tick = tick
        self.interval_s = interval_s
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="liveness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick(self.clock())
