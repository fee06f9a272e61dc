"""What every telemetry source shares: the protocol, a thread skeleton, backoff, quiet logs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from fedmq_runtime.backoff import Backoff
from fedmq_runtime.logs import RateLimitedLog
from schemas import Sample, SensorSpec

# Backoff and RateLimitedLog live in fedmq_runtime (the site's bus uses them too).
__all__ = [
    "Backoff",
    "Emit",
    "EmitRow",
    "RateLimitedLog",
    "Source",
    "SplitSource",
    "ThreadedSource",
]

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


@runtime_checkable
class SplitSource(Protocol):
    """A source whose readings belong to devices it finds at run time (a file's
    ``device_column``): before ``start`` the daemon calls ``route`` with ``emit_for``
    (device -> its row emitter) and ``on_new_device`` (called on the reader thread before
    the first row of each new device, e.g. to re-announce the registration).
    ``devices()`` lists the devices found so far; the source's own ``device`` is only the
    prefix of their names and never a topic."""

    device: str
    historical: bool

    def devices(self) -> tuple[str, ...]:
        """The devices found so far, in order of appearance."""
        ...

    def route(
        self, emit_for: Callable[[str], EmitRow], on_new_device: Callable[[str], None]
    ) -> None:
        """Where rows of each device go; call before ``start``."""
        ...


class ThreadedSource:
    """Skeleton of a source: a daemon thread running ``_run`` until ``stop()``.

    Subclasses implement ``_run()``, check ``self._stopping`` (an Event; wait on it instead
    of sleeping) and hand each reading's samples to ``self._emit_row`` (or single samples
    to ``self._emit_sample``), which counts them and keeps a failing callback from killing
    the reader.

    ``historical`` is True for a source whose samples carry recorded times (a file with a
    timestamp column): the daemon flags its telemetry historical.
    """

    historical: bool = False

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

    def _emit_row(self, samples: Sequence[Sample], target: EmitRow | None = None) -> None:
        """Emit one reading's samples together (one call when the daemon batches rows);
        ``target``: the row emitter of another device than this source's own."""
        if target is not None:
            self._deliver(target, samples)
            return
        if self._emit_rows is None:
            for sample in samples:
                self._emit_sample(sample)
            return
        self._deliver(self._emit_rows, samples)

    def _deliver(self, emit_rows: EmitRow, samples: Sequence[Sample]) -> None:
        if not samples:
            return
        bad = sum(1 for s in samples if s.q == "bad")
        if bad:
            self._count("bad_values", bad)
        try:
            emit_rows(samples)
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
