"""Groups samples per device into batches by count and by time window.

A row (the samples of one reading, :meth:`Batcher.add_row`) always goes into one batch
whole. What a batcher holds is not durable: a kill -9 loses, per device, at most the
samples of its open window: fewer than ``batch_max_samples`` samples (or one row, when a
row is larger), collected over at most ``batch_max_wait_s`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from schemas import Sample

__all__ = ["Batcher", "FlushFn"]

log = logging.getLogger(__name__)

FlushFn = Callable[[str, list[Sample]], None]

# A TelemetryBatch holds at most this many samples.
_MAX_BATCH = 10_000


class Batcher:
    """Collects samples per device; a batch goes out when full or when its window is due.

    A device's window opens with its first buffered sample and is due ``max_wait_s`` later
    (by ``clock``); ``poll()`` flushes due windows and should be called periodically (see
    ``next_due_in()``). ``flush(device, samples)`` runs outside the buffer lock, one call at a
    time and in order per device, so it must be quick (enqueue only). Thread-safe.
    """

    def __init__(
        self,
        flush: FlushFn,
        max_samples: int = 100,
        max_wait_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= max_samples <= _MAX_BATCH:
            raise ValueError(f"max_samples must be 1..{_MAX_BATCH}, got {max_samples}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._flush = flush
        self.max_samples = max_samples
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._buffers: dict[str, list[Sample]] = {}
        self._opened: dict[str, float] = {}
        self._ready: deque[tuple[str, list[Sample]]] = deque()
        # Held by whichever thread is calling flush; keeps batches in order without
        # making add() wait for another thread's flush.
        self._flushing = threading.Lock()
        self.flush_errors = 0
        self.batches = 0

    def add(self, device: str, sample: Sample) -> None:
        """Buffer one sample; flushes the device's batch when it reaches ``max_samples``."""
        with self._lock:
            buf = self._buffers.get(device)
            if buf is None:
                buf = self._buffers[device] = []
                self._opened[device] = self._clock()
            buf.append(sample)
            if len(buf) < self.max_samples:
                return
            self._take(device)
        self._drain()

    def add_row(self, device: str, samples: Sequence[Sample]) -> None:
        """Buffer one reading's samples; they go into one batch together.

        If the row does not fit the open batch, that batch is flushed first; a row larger
        than ``max_samples`` makes a batch of its own.
        """
        if not samples:
            return
        if len(samples) > _MAX_BATCH:  # a wider "row" than any batch may hold
            for i in range(0, len(samples), _MAX_BATCH):
                self.add_row(device, samples[i : i + _MAX_BATCH])
            return
        with self._lock:
            buf = self._buffers.get(device)
            took = buf is not None and len(buf) + len(samples) > self.max_samples
            if took:
                self._take(device)
                buf = None
            if buf is None:
                buf = self._buffers[device] = []
                self._opened[device] = self._clock()
            buf.extend(samples)
            if len(buf) >= self.max_samples:
                self._take(device)
                took = True
        if took:
            self._drain()

    def poll(self) -> int:
        """Flush every window that is due; returns the number of batches flushed."""
        now = self._clock()
        with self._lock:
            due = [d for d, t in self._opened.items() if now - t >= self.max_wait_s]
            for device in due:
                self._take(device)
        return self._drain() if due else 0

    def flush_all(self) -> int:
        """Flush everything buffered (shutdown); returns the number of batches flushed."""
        with self._lock:
            for device in list(self._buffers):
                self._take(device)
        return self._drain()

    def pending(self) -> int:
        """Samples buffered and not yet flushed."""
        with self._lock:
            return sum(len(b) for b in self._buffers.values()) + sum(len(b) for _, b in self._ready)

    def next_due_in(self) -> float | None:
        """Seconds until the oldest open window is due (0 if overdue), None when empty."""
        with self._lock:
            if not self._opened:
                return None
            oldest = min(self._opened.values())
        return max(0.0, oldest + self.max_wait_s - self._clock())

    def _take(self, device: str) -> None:
        # Caller holds self._lock.
        self._ready.append((device, self._buffers.pop(device)))
        del self._opened[device]

    def _drain(self) -> int:
        flushed = 0
        while True:
            if not self._flushing.acquire(blocking=False):
                # The thread holding it re-checks _ready after releasing, so our batch
                # is not stranded.
                return flushed
            try:
                while True:
                    with self._lock:
                        if not self._ready:
                            break
                        device, samples = self._ready.popleft()
                    self._call(device, samples)
                    flushed += 1
            finally:
                self._flushing.release()
            with self._lock:
                if not self._ready:
                    return flushed

    def _call(self, device: str, samples: list[Sample]) -> None:
        try:
            self._flush(device, samples)
            self.batches += 1
        except Exception:
            # The caller is a source thread; a failing sink must not kill it.
            self.flush_errors += 1
            log.exception("flush of %d samples from %s failed", len(samples), device)
