"""File replay source: a recorded CSV/whitespace file played back at ``rate_hz`` rows/s.

This is the demo's sensor (a C-MAPSS engine trajectory). Samples carry the replay time, not
anything recorded in the file, so replayed data looks live to the rest of fedmq.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from schemas import now_ms
from site_node.sources.base import Backoff, ThreadedSource
from site_node.sources.config import FileDeviceConfig, RangeFilter
from site_node.sources.parsing import CsvLineParser, MalformedLine, split_fields

__all__ = ["FileSource"]

log = logging.getLogger(__name__)

# Behind schedule by more than this (a stalled disk, a suspended VM): restart the schedule
# from now instead of bursting the backlog out at once.
_MAX_LAG_S = 1.0


class FileSource(ThreadedSource):
    """Replays a file row by row; one sample per emitted column per row.

    Without ``loop`` the thread ends at end of file (``stats()["finished"] == 1``).
    Stats: ``rows`` (emitted), ``samples``, ``filtered`` (rows ``include`` dropped),
    ``malformed``, ``bad_values``, ``loops`` (completed passes), ``open_failures``,
    ``finished``, ``emit_errors``.
    """

    def __init__(
        self,
        cfg: FileDeviceConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        counters = ("rows", "filtered", "malformed", "bad_values", "loops", "open_failures")
        super().__init__(cfg.name, cfg.sensors(), (*counters, "finished"), clock)
        self.cfg = cfg
        self._columns = cfg.resolved_columns()
        self._delimiter = " " if cfg.format == "whitespace" else cfg.delimiter
        names = [c.name for c in self._columns]
        self._filters: list[tuple[int, frozenset[float] | RangeFilter]] = [
            (names.index(col), rule if isinstance(rule, RangeFilter) else frozenset(rule))
            for col, rule in cfg.include.items()
        ]

    def _parser(self, header: str | None) -> CsvLineParser:
        positions = None
        if header is not None:
            fields = [f.strip() for f in split_fields(header, self._delimiter)]
            wanted = [c.name for c in self._columns]
            # A header that names every configured column lets a wider file be replayed
            # by name; otherwise columns are positional.
            if set(wanted) <= set(fields):
                positions = [fields.index(n) for n in wanted]
        return CsvLineParser(self._columns, self._delimiter, self.cfg.exclude, positions=positions)

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
        emitted = 0
        for line in lines:
            if self._stopping.is_set():
                break
            text = line.strip()
            if not text:
                continue
            try:
                values = parser.values(text)
            except MalformedLine as exc:
                self._malformed(str(exc), text[:80])
                continue
            if not self._keep(values):
                self._count("filtered")
                continue
            delay = next_due - self._clock()
            if delay > 0:
                if self._stopping.wait(delay):
                    break
            elif delay < -_MAX_LAG_S:
                next_due = self._clock()
            next_due += interval
            try:
                samples = parser.samples(values, now_ms())
            except MalformedLine as exc:
                self._count("malformed")
                log.debug("row rejected: %s", exc)
                continue
            self._emit_row(samples)
            self._count("rows")
            emitted += 1
        return emitted, next_due
