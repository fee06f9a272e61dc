"""Periodic heartbeat: a small stoppable object with jitter and an injectable clock."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

__all__ = ["HeartbeatSender"]

log = logging.getLogger(__name__)


class HeartbeatSender:
    """Calls ``send()`` every ``interval_s`` (+/- ``jitter`` fraction) until stopped.

    The schedule is kept on ``clock`` (absolute deadlines, no drift); ``wait(seconds)``
    returns True when stop was requested. Both default to real time and the stop Event, and
    tests inject their own. A failing ``send`` is logged and the beat goes on.
    """

    def __init__(
        self,
        interval_s: float,
        send: Callable[[], None],
        jitter: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self.jitter = jitter
        self.sent = 0
        self._send = send
        self._clock = clock
        self._rng = rng
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait
        self._thread: threading.Thread | None = None

    def next_delay(self) -> float:
        """The interval with jitter applied: interval * (1 +/- jitter)."""
        return self.interval_s * (1.0 + self.jitter * (2.0 * self._rng() - 1.0))

    def run(self) -> None:
        """Beat on the calling thread until stopped (the first beat goes out at once)."""
        due = self._clock()
        while not self._stop.is_set():
            now = self._clock()
            if now >= due:
                try:
                    self._send()
                    self.sent += 1
                except Exception:
                    log.exception("heartbeat send failed")
                due = max(due + self.next_delay(), now)
            if self._wait(max(0.0, due - self._clock())):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="site-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
