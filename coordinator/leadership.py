"""Which of several ``fedmq serve`` instances on one PostgreSQL database leads.

Every instance of an ingest group stores its share of the telemetry; the one holding the
database's leader lock (:class:`coordinator.store.leader.LeaderLock`) also takes the
sites' statuses, registrations, heartbeats and job messages, tracks liveness, sends
rebirth and drives training runs. :class:`Leadership` polls the lock on a thread of its
own: a follower tries to take it every ``interval_s`` and, once it holds it, calls
``on_lead`` (exactly once); a leader checks every ``interval_s`` that it still holds it.

A leader that loses the lock (its database connection dropped: the server restarted, the
network failed) cannot step down cleanly while its threads act as leader, and another
instance may already lead; it sets :attr:`lost`, and ``fedmq serve`` exits with an error
for its supervisor to restart it as a follower: within ``interval_s`` (plus the daemon's
0.2 s poll) its ingest stops taking leader traffic; its round drivers and its last batch
may still act while it stops (up to the drivers' 10 s join), which is the window in
which two leaders may overlap (there is no fencing token yet).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Leadership"]

log = logging.getLogger(__name__)


class Leadership:
    def __init__(self, lock: Any, on_lead: Callable[[], None], interval_s: float = 1.0) -> None:
        self.lock, self.on_lead, self.interval_s = lock, on_lead, interval_s
        self.leading = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and give the lock up (another instance takes over at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.lock.release()
        self.lock.close()

    def _lead(self) -> None:
        try:
            self.on_lead()
        except Exception:  # half a leader is worse than none: stop, be restarted
            log.exception("could not take up the leader's duties")
            self.lost.set()
            self._stop.set()

    def _run(self) -> None:
        wait = 0.0  # the first try at once
        while not self._stop.wait(wait):
            wait = self.interval_s
            try:
                if self.leading.is_set():
                    if not self.lock.held():
                        log.error("lost the leader lock (database connection gone)")
                        self.lost.set()
                        return
                elif self.lock.try_acquire():
                    log.info("won the leader lock: this instance leads")
                    self.leading.set()
                    self._lead()
            except Exception as exc:  # the database unreachable: keep trying, say so
                if time.monotonic() - self._last_error >= 30:
                    self._last_error = time.monotonic()
                    log.warning("leader lock: %s: %s (retrying)", type(exc).__name__, exc)
