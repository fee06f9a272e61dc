"""``publish = "summary"``: per device and sensor, min/mean/max/count over fixed windows.

The wire encoding is ordinary telemetry, so delivery and the coordinator stay as they are:
one reading per window on the device's own topic, through the batcher and the outbox
(durable, acked, replayed), stamped ``ts`` = the window's end (epoch ms, exclusive bound),
with four samples per sensor: ``<sensor>.min``, ``<sensor>.mean``, ``<sensor>.max`` (the
sensor's unit) and ``<sensor>.count`` (unit ""). Windows are aligned to the epoch
(``[k*W, (k+1)*W)`` by sample time). A ``bad`` sample is counted in no aggregate; a sensor
whose window held only bad samples sends ``<sensor>.count = 0`` alone. A window that held
an ``uncertain`` sample is sent with ``q = "uncertain"``.

A window closes when a sample of a later window arrives, or once the wall clock is
``grace_s`` past its end and past its last sample. Samples older than a closed window
(``late``) are counted and kept in the local history only. At shutdown the open windows
are sent as they are; after a restart the rest of such a window is a second summary with
the same stamp (counts add up). A kill -9 loses the open windows from the wire, not from
the history.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fedmq_runtime.clock import now_ms
from schemas import Sample, SensorSpec
from schemas.telemetry import Quality

__all__ = ["AGGREGATES", "Summarizer", "published_sensors"]

AGGREGATES = ("min", "mean", "max", "count")
# A Sample name holds at most 128 characters; ".count" is the longest suffix.
_MAX_SENSOR = 128 - len(".count")

EmitRow = Callable[[str, list[Sample]], None]


def published_sensors(sensors: Sequence[SensorSpec], publish: str) -> tuple[SensorSpec, ...]:
    """What a device's registration lists for its publish mode (none: nothing)."""
    if publish == "raw":
        return tuple(sensors)
    if publish == "none":
        return ()
    return tuple(
        SensorSpec(name=f"{s.name}.{agg}", unit="" if agg == "count" else s.unit)
        for s in sensors
        if len(s.name) <= _MAX_SENSOR
        for agg in AGGREGATES
    )


@dataclass
class _Acc:
    unit: str
    lo: float = float("inf")
    hi: float = float("-inf")
    total: float = 0.0
    n: int = 0


@dataclass
class _Window:
    start: int
    end: int
    last_seen: int  # wall clock ms of the last sample
    sensors: dict[str, _Acc] = field(default_factory=dict)
    uncertain: bool = False


class Summarizer:
    """Windows per device; ``emit(device, samples)`` gets one summary reading per window.

    ``add_row`` from source threads, ``poll`` from the daemon loop, ``flush_all`` at
    shutdown; ``emit`` is called under the summarizer's lock (it must be quick: the
    batcher's ``add_row``).
    """

    def __init__(
        self,
        emit: EmitRow,
        grace_s: float = 2.0,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._emit = emit
        self._grace = int(grace_s * 1000)
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._open: dict[str, _Window] = {}
        self._closed_until: dict[str, int] = {}
        self.late = 0
        self.too_long = 0
        self.windows = 0

    def add_row(self, device: str, samples: Sequence[Sample], window_s: float) -> None:
        """Fold one reading of ``device`` into its window of ``window_s`` seconds."""
        width = int(window_s * 1000)
        now = self._clock_ms()
        with self._lock:
            for s in samples:
                start = s.ts - s.ts % width
                win = self._open.get(device)
                if win is None or start != win.start:
                    if win is not None and start < win.start:
                        self.late += 1
                        continue
                    if start < self._closed_until.get(device, 0):
                        self.late += 1
                        continue
                    if win is not None:
                        self._close(device, win)
                    win = self._open[device] = _Window(start, start + width, now)
                win.last_seen = now
                if len(s.name) > _MAX_SENSOR:
                    self.too_long += 1
                    continue
                acc = win.sensors.get(s.name)
                if acc is None:
                    acc = win.sensors[s.name] = _Acc(s.unit)
                if s.q == "bad":
                    continue
                if s.q == "uncertain":
                    win.uncertain = True
                v = s.value
                acc.lo = v if v < acc.lo else acc.lo
                acc.hi = v if v > acc.hi else acc.hi
                acc.total += v
                acc.n += 1

    def poll(self) -> int:
        """Send every window that is over (by the wall clock); returns how many."""
        if not self._open:
            return 0
        now = self._clock_ms()
        with self._lock:
            due = [
                (d, w)
                for d, w in self._open.items()
                if now >= w.end + self._grace and now >= w.last_seen + self._grace
            ]
            for device, win in due:
                self._close(device, win)
        return len(due)

    def flush_all(self) -> int:
        """Send every open window as it is (shutdown); returns how many."""
        with self._lock:
            windows = list(self._open.items())
            for device, win in windows:
                self._close(device, win)
        return len(windows)

    def _close(self, device: str, win: _Window) -> None:
        # Caller holds the lock.
        del self._open[device]
        self._closed_until[device] = max(self._closed_until.get(device, 0), win.end)
        q: Quality = "uncertain" if win.uncertain else "good"
        out: list[Sample] = []
        for name, acc in win.sensors.items():
            if acc.n:
                out += [
                    Sample(ts=win.end, name=f"{name}.min", value=acc.lo, unit=acc.unit, q=q),
                    Sample(
                        ts=win.end, name=f"{name}.mean", value=acc.total / acc.n, unit=acc.unit, q=q
                    ),
                    Sample(ts=win.end, name=f"{name}.max", value=acc.hi, unit=acc.unit, q=q),
                ]
            out.append(Sample(ts=win.end, name=f"{name}.count", value=float(acc.n), q=q))
        if out:
            self.windows += 1
            self._emit(device, out)
