"""File replay source: a recorded CSV/whitespace file played back at ``rate_hz`` rows/s.

This is the demo's sensor (a C-MAPSS engine trajectory). Without ``timestamp_column``
samples carry the replay time, so replayed data looks live to the rest of fedmq; with it
they keep the time recorded in the file and the source is ``historical`` (the daemon flags
its telemetry so). Pacing is ``rate_hz`` rows per second either way: the recorded times
are kept as they are, so replaying faster only delivers the history sooner.

With ``device_column`` the file holds several machines: each row goes to the device
``{name}-{value}``, created at the value's first row (``on_new_device``), up to
``max_devices``; rows of further values are dropped and counted (``device_limit``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from schemas import Sample, now_ms
from site_node.sources.base import Backoff, EmitRow, ThreadedSource
from site_node.sources.config import FileDeviceConfig, RangeFilter, resolve_timezone
from site_node.sources.parsing import (
    FileRowParser,
    MalformedLine,
    TimestampParser,
    make_sample,
    split_fields,
)

__all__ = ["FileSource"]

log = logging.getLogger(__name__)

# Behind schedule by more than this (a stalled disk, a suspended VM): restart the schedule
# from now instead of bursting the backlog out at once.
_MAX_LAG_S = 1.0
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class FileSource(ThreadedSource):
    """Replays a file row by row; one sample per emitted column per row.

    Without ``loop`` the thread ends at end of file (``stats()["finished"] == 1``).
    Stats: ``rows`` (emitted), ``samples``, ``filtered`` (rows ``include`` dropped),
    ``malformed``, ``bad_values``, ``loops`` (completed passes), ``open_failures``,
    ``finished``, ``emit_errors``, ``header_errors`` (a header lacking a column named by
    header only), and with ``device_column`` ``devices`` (found) and ``device_limit``
    (rows dropped beyond ``max_devices``).
    """

    def __init__(
        self,
        cfg: FileDeviceConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        counters = ("rows", "filtered", "malformed", "bad_values", "loops", "open_failures")
        extra = ("devices", "device_limit") if cfg.device_column else ()
        super().__init__(cfg.name, cfg.sensors(), (*counters, "finished", *extra), clock)
        self.cfg = cfg
        self.historical = cfg.timestamp_column is not None
        self._columns = cfg.resolved_columns()
        self._delimiter = " " if cfg.format == "whitespace" else cfg.delimiter
        self._emitted = [(s.name, s.unit) for s in self._sensors]
        emitted = [name for name, _ in self._emitted]
        # Columns read as numbers: the emitted ones, then those only filtered on.
        self._numeric = [*emitted, *(c for c in cfg.include if c not in emitted)]
        self._filters: list[tuple[int, frozenset[float] | RangeFilter]] = [
            (
                self._numeric.index(col),
                rule if isinstance(rule, RangeFilter) else frozenset(rule),
            )
            for col, rule in cfg.include.items()
        ]
        self._ts_parser = None
        if cfg.timestamp_column is not None:
            self._ts_parser = TimestampParser(cfg.timestamp_format, resolve_timezone(cfg.timezone))
        self._needed = [*self._numeric]
        for col in (cfg.timestamp_column, cfg.device_column):
            if col is not None:
                self._needed.append(col)
        # device_column: key -> device name, and where each device's rows go.
        self._devices: dict[str, str] = {}
        self._devices_lock = threading.Lock()
        self._emit_for: Callable[[str], EmitRow] | None = None
        self._on_new_device: Callable[[str], None] = lambda _d: None
        self._targets: dict[str, EmitRow] = {}
        self._routes: dict[str, EmitRow] = {}

    # -- device_column (SplitSource) ------------------------------------------------------

    def devices(self) -> tuple[str, ...]:
        """Devices found so far (``device_column``), else this source's one device."""
        if self.cfg.device_column is None:
            return (self.device,)
        with self._devices_lock:
            return tuple(self._devices.values())

    def route(
        self, emit_for: Callable[[str], EmitRow], on_new_device: Callable[[str], None]
    ) -> None:
        """Where each device's rows go (``device_column``); call before ``start``."""
        self._emit_for = emit_for
        self._on_new_device = on_new_device

    def start(self, emit: Callable[[Sample], None], emit_row: EmitRow | None = None) -> None:
        """Start the replay; a ``device_column`` source must be routed first."""
        if self.cfg.device_column is not None and self._emit_for is None:
            raise RuntimeError(f"source {self.device!r} splits by device: call route() first")
        super().start(emit, emit_row)

    def _target(self, key: str) -> EmitRow | None:
        """The row emitter of the device named by ``key`` (None: dropped, counted)."""
        # Only the reader thread writes _routes: no lock on this per-row path.
        target = self._routes.get(key)
        if target is None:
            target = self._new_target(key)
            if target is not None:  # refused ids are not kept: they may be countless
                self._routes[key] = target
        return target

    def _new_target(self, key: str) -> EmitRow | None:
        name = f"{self.device}-{key}"
        if not _DEVICE_NAME.match(name):
            raise MalformedLine(
                f"device id {key[:32]!r} does not make a topic level ([A-Za-z0-9_-], "
                "128 characters at most)"
            )
        if len(self._targets) >= self.cfg.max_devices:
            # Rate limited: a wrongly chosen column (a timestamp) has a new value per row.
            self._ratelog(
                logging.WARNING,
                "device_limit",
                "device %s: %s %r and further new values are over max_devices = %d: "
                "their rows are dropped (counted in device_limit)",
                self.device,
                self.cfg.device_column,
                key,
                self.cfg.max_devices,
            )
            return None
        assert self._emit_for is not None
        self._targets[name] = self._emit_for(name)
        self._on_new_device(name)
        with self._devices_lock:
            self._devices[key] = name
        self._count("devices")
        log.info("device %s: new device %s (%s %r)", self.device, name, self.cfg.device_column, key)
        return self._targets[name]

    # -- replay ---------------------------------------------------------------------------

    def _parser(self, header: str | None) -> FileRowParser | None:
        names = [c.name for c in self._columns]
        fields: dict[str, int] | None = None
        if header is not None:
            found = [f.strip().strip('"') for f in split_fields(header, self._delimiter)]
            # A header that names every needed column lets a wider file be replayed by
            # name; otherwise columns are positional.
            if set(self._needed) <= set(found):
                fields = {n: found.index(n) for n in self._needed}
        if fields is None:
            missing = [n for n in self._needed if n not in names]
            if missing:
                self._count("header_errors")
                log.error(
                    "device %s: %s has no header naming %s: nothing to replay",
                    self.device,
                    self.cfg.path,
                    missing,
                )
                return None
            return FileRowParser(
                {n: names.index(n) for n in self._needed},
                len(names),
                True,
                self._delimiter,
                self._numeric,
                self._ts_spec(),
                self.cfg.device_column,
            )
        return FileRowParser(
            fields,
            max(fields.values()) + 1,
            False,
            self._delimiter,
            self._numeric,
            self._ts_spec(),
            self.cfg.device_column,
        )

    def _ts_spec(self) -> tuple[str, TimestampParser] | None:
        if self._ts_parser is None or self.cfg.timestamp_column is None:
            return None
        return self.cfg.timestamp_column, self._ts_parser

    def _keep(self, values: list[float | None]) -> bool:
        for index, rule in self._filters:
            value = values[index]
            if value is None:
                return False
            if isinstance(rule, RangeFilter):
                if not rule.contains(value):
                    return False
            elif value not in rule:
                return False
        return True

    def _open(self) -> TextIO | None:
        try:
            return open(self.cfg.path, encoding="utf-8", errors="replace")
        except OSError as exc:
            self._count("open_failures")
            self._ratelog(
                logging.WARNING,
                "open",
                "device %s: cannot open %s: %s",
                self.device,
                self.cfg.path,
                exc,
            )
            return None

    def _run(self) -> None:
        interval = 1.0 / self.cfg.rate_hz
        backoff = Backoff(0.5, 30.0)
        next_due = self._clock()
        while not self._stopping.is_set():
            handle = self._open()
            if handle is None:
                if self._stopping.wait(backoff.next_delay()):
                    return
                continue
            backoff.reset()
            with handle:
                emitted, next_due = self._play(iter(handle), interval, next_due)
            if self._stopping.is_set():
                return
            self._count("loops")
            if not self.cfg.loop:
                break
            if emitted == 0:
                # Looping a file with no row to emit would spin; that is a config error.
                log.warning(
                    "device %s: %s has no row to replay; stopping", self.device, self.cfg.path
                )
                break
        self._count("finished")
        log.info("device %s: replay of %s finished", self.device, self.cfg.path)

    def _play(self, lines: Iterator[str], interval: float, next_due: float) -> tuple[int, float]:
        parser = self._parser(next(lines, None) if self.cfg.header else None)
        if parser is None:
            return 0, next_due
        split = self.cfg.device_column is not None
        emitted = 0
        for line in lines:
            if self._stopping.is_set():
                break
            text = line.strip()
            if not text:
                continue
            try:
                values, ts, key = parser.parse(text)
                if not self._keep(values):
                    self._count("filtered")
                    continue
                target = self._target(key) if split and key is not None else None
            except MalformedLine as exc:
                self._malformed(str(exc), text[:80])
                continue
            if split and target is None:
                self._count("device_limit")
                continue
            delay = next_due - self._clock()
            if delay > 0:
                if self._stopping.wait(delay):
                    break
            elif delay < -_MAX_LAG_S:
                next_due = self._clock()
            next_due += interval
            stamp = now_ms() if ts is None else ts
            try:
                samples = [
                    make_sample(stamp, name, values[i], unit)
                    for i, (name, unit) in enumerate(self._emitted)
                ]
            except MalformedLine as exc:
                self._count("malformed")
                log.debug("row rejected: %s", exc)
                continue
            self._emit_row(samples, target)
            self._count("rows")
            emitted += 1
        return emitted, next_due
