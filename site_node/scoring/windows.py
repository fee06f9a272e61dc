"""Each covered device's most recent readings, kept in memory for scoring.

:meth:`Windows.add` runs on the source threads for every reading (the daemon's row
watcher): it builds one row ``{sensor: value}`` from the reading's samples (``bad``
quality samples left out), appends it with the reading's time to the device's bounded
deque and returns; it never blocks on anything but one short lock. :meth:`Windows.due`
(on the scoring thread) copies out the windows that are full and got new readings since
they were last taken.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from schemas import Sample

__all__ = ["DueWindow", "Windows"]

log = logging.getLogger(__name__)


@dataclass
class _Device:
    rows: deque[tuple[int, dict[str, float]]]
    fresh: int = 0  # readings since the window was last taken
    readings: int = 0


@dataclass(frozen=True)
class DueWindow:
    device: str
    rows: list[dict[str, float]]  # oldest first
    end_ms: int  # the time of the newest reading in the window


@dataclass
class Windows:
    """Per-device windows of ``size`` rows for the devices ``covers`` accepts, at most
    ``max_devices`` of them."""

    size: int
    max_devices: int
    covers: Callable[[str], bool] = lambda _d: True
    _devices: dict[str, _Device] = field(default_factory=dict)
    _refused: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, device: str, row: Sequence[Sample]) -> None:
        """One reading of ``device`` (on a source thread; never raises)."""
        if not row or not self.covers(device):
            return
        values: dict[str, float] = {}
        ts = 0
        for s in row:  # one pass: this runs for every reading of every covered device
            if s.q != "bad":
                values[s.name] = s.value
            if s.ts > ts:
                ts = s.ts
        if not values:
            return
        with self._lock:
            d = self._devices.get(device)
            if d is None:
                if len(self._devices) >= self.max_devices:
                    if device not in self._refused:
                        self._refused.add(device)
                        log.warning("scoring: device %s left out (max_windows %d reached)",
                                    device, self.max_devices)  # fmt: skip
                    return
                d = self._devices[device] = _Device(deque(maxlen=self.size))
            d.rows.append((ts, values))
            d.fresh += 1
            d.readings += 1

    def due(self) -> list[DueWindow]:
        """Copies of the full windows that got readings since they were last taken."""
        out = []
        with self._lock:
            for device, d in self._devices.items():
                if d.fresh and len(d.rows) >= self.size:
                    d.fresh = 0
                    out.append(DueWindow(device, [r for _t, r in d.rows], d.rows[-1][0]))
        return out

    def resize(self, size: int, covers: Callable[[str], bool]) -> None:
        """A new model: ``size`` rows per window (the newest rows kept), new coverage."""
        with self._lock:
            self.size, self.covers = size, covers
            for device in [dev for dev in self._devices if not covers(dev)]:
                del self._devices[device]
            for d in self._devices.values():
                d.rows = deque(d.rows, maxlen=size)
                d.fresh = len(d.rows)
            self._refused.clear()

    def clear(self) -> None:
        with self._lock:
            self._devices.clear()
            self._refused.clear()

    def devices(self) -> int:
        with self._lock:
            return len(self._devices)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "devices": len(self._devices),
                "full": sum(1 for d in self._devices.values() if len(d.rows) >= self.size),
                "readings": sum(d.readings for d in self._devices.values()),
                "left_out": len(self._refused),
            }
