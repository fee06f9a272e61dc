"""What every telemetry source shares: the protocol, a thread skeleton, backoff, quiet logs."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from schemas import Sample, SensorSpec

__all__ = ["Backoff", "Emit", "EmitRow", "RateLimitedLog", "Source", "ThreadedSource"]

log = logging.getLogger(__name__)

Emit = Callable[[Sample], None]
# The samples of one reading (a file or serial row): batched together, never split.
EmitRow = Callable[[Sequence[Sample]], None]


@runtime_checkable
class Source(Protocol):
    """A telemetry source the site daemon starts, stops and reports on."""

    device: str

    def sensors(self) -> tuple[SensorSpec, ...]:
        """The sensors (name and unit) this source reports, for the registration."""
        ...

    def start(self, emit: Emit, emit_row: EmitRow | None = None) -> None:
        """Start producing samples on an own thread; returns at once.

        With ``emit_row`` the samples of one reading go out in one call (so a batch never
        holds half a row); without it, one ``emit`` call per sample.
        """
        ...

    def stop(self) -> None:
        """Stop and join the thread; returns within about a second."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters (samples, malformed lines, reopens, ...)."""
        ...


class Backoff:
    """Exponential backoff with full jitter between ``base_s`` and ``max_s``.

    ``next_delay()`` returns the wait before the next attempt and doubles the ceiling;
    ``reset()`` after a success. ``rng`` is injectable so tests are deterministic.
    """

    def __init__(
        self, base_s: float, max_s: float, rng: Callable[[], float] = random.random
    ) -> None:
        self.base_s = base_s
        self.max_s = max(max_s, base_s)
        self._rng = rng
        self._attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt: between half and all of the current ceiling."""
        ceiling = min(self.max_s, self.base_s * (2.0**self._attempt))
        self._attempt += 1
        # Half fixed, half jitter: never zero (no hot loop), and sites that lost the same
        # device at the same time do not retry in lock step.
        return ceiling * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        """Forget earlier failures."""
        self._attempt = 0


class RateLimitedLog:
    """Logs a recurring problem at most once per ``interval_s`` per key, counting the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` was logged recently; True if it was logged."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            self._logger.log(level, msg + " (%d similar suppressed)", *args, suppressed)
        else:
            self._logger.log(level, msg, *args)
        return True


class ThreadedSource:
    """Skeleton of a source: a daemon thread running ``_run`` until ``stop()``.

    Subclasses implement ``_run()``, check ``self._stopping`` (an Event; wait on it instead
    of sleeping) and hand each reading's samples to ``self._emit_row`` (or single samples
    to ``self._emit_sample``), which counts them and keeps a failing callback from killing
    the reader.
    """

    def __init__(
        self,
        device: str,
        sensors: tuple[SensorSpec, ...],
        counters: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = device
        self._sensors = sensors
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._emit: Emit | None = None
        self._emit_rows: EmitRow | None = None
        self._counts: dict[str, int] = dict.fromkeys(("samples", "emit_errors", *counters), 0)
        self._counts_lock = threading.Lock()
        self._ratelog = RateLimitedLog(logging.getLogger(type(self).__module__))

    def sensors(self) -> tuple[SensorSpec, ...]:
        """The configured sensors."""
        return self._sensors

    def start(self, emit: Emit, emit_row: EmitRow | None = None) -> None:
        """Start the reader thread (once)."""
        if self._thread is not None:
            raise RuntimeError(f"source {self.device!r} already started")
        self._emit = emit
        self._emit_rows = emit_row
        self._thread = threading.Thread(
            target=self._main, name=f"source-{self.device}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop and wait for it (bounded)."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
            if thread.is_alive():
                log.warning("source %s did not stop within 2 s", self.device)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end on its own; True if it has ended."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def running(self) -> bool:
        """Whether the reader thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters."""
        with self._counts_lock:
            return dict(self._counts)

    def _count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def _malformed(self, why: str, snippet: object) -> None:
        self._count("malformed")
        self._ratelog(
            logging.WARNING,
            "malformed",
            "device %s: skipped malformed line (%s): %r",
            self.device,
            why,
            snippet,
        )

    def _emit_sample(self, sample: Sample) -> None:
        if sample.q == "bad":
            self._count("bad_values")
        assert self._emit is not None
        try:
            self._emit(sample)
        except Exception:
            self._count("emit_errors")
            self._ratelog(logging.ERROR, "emit", "device %s: emit callback failed", self.device)
            log.debug("emit failure", exc_info=True)
            return
        self._count("samples")

    def _emit_row(self, samples: Sequence[Sample]) -> None:
        """Emit one reading's samples together (one call when the daemon batches rows)."""
        if self._emit_rows is None:
            for sample in samples:
                self._emit_sample(sample)
            return
        if not samples:
            return
        bad = sum(1 for s in samples if s.q == "bad")
        if bad:
            self._count("bad_values", bad)
        try:
            self._emit_rows(samples)
        except Exception:
            self._count("emit_errors")
            self._ratelog(logging.ERROR, "emit", "device %s: emit callback failed", self.device)
            log.debug("emit failure", exc_info=True)
            return
        self._count("samples", len(samples))

    def _main(self) -> None:
        try:
            self._run()
        except Exception:
            # A bug in one source must not take the site down; it is logged once, loudly.
            log.exception("source %s crashed", self.device)
            self._count("crashes")

    def _run(self) -> None:
        raise NotImplementedError
