"""The site's local telemetry history: a SQLite file of its own samples, bounded and pruned.

Sources hand readings to :meth:`History.add_row` (a list append under a lock: the
telemetry path never waits for the disk); one writer thread owns the connection and
commits what is pending every ``flush_interval_s`` (or sooner, when much is pending) in one
transaction. The file is separate from the outbox: nothing here is ever sent.

Schema: one row per *reading* (the samples of one file or serial row), which keeps the
writer's cost per sample low: ``readings`` (``id``, ``ts``, ``layout``, ``vals``: the
values as little-endian float64s, ``q``: one quality code byte per value, NULL when all
are good); ``layouts`` (a device and the ordered series of a reading's samples);
``series`` (device, sensor, unit). Two readings in the same millisecond stay two lines of
an export. :func:`read_readings` reads it back.

Bounds, checked after each commit (page counts, cheap) and every ``prune_interval_s``:
readings the site stored more than ``max_age_days`` ago go (by the time they arrived, not
their timestamps, so a replayed file with recorded times from years ago is kept: ``marks``
notes once a minute the last reading id stored by then); when the pages in use pass
``max_bytes`` the earliest stored readings go until 90 % of it is left (freed pages are
reused, so the file stops growing).

What a crash loses: samples not committed yet (at most ``flush_interval_s`` of them);
committed samples survive a kill -9 (WAL), and with ``synchronous = "FULL"`` a power loss.
A storage error (a full disk) drops that batch and counts it (``dropped``); the writer
goes on.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from fedmq_runtime.clock import now_ms
from fedmq_runtime.logs import RateLimitedLog
from schemas import Sample, SensorSpec
from site_node.history.config import HistorySettings

__all__ = [
    "QUALITY_CODES",
    "DeviceHistory",
    "History",
    "Reading",
    "connect",
    "device_summary",
    "read_readings",
]

log = logging.getLogger(__name__)

QUALITY_CODES = {"good": 0, "uncertain": 1, "bad": 2}
_QUALITY_NAMES = {v: k for k, v in QUALITY_CODES.items()}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, name TEXT NOT NULL, unit TEXT NOT NULL,
    UNIQUE (device, name, unit));
CREATE TABLE IF NOT EXISTS layouts (
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, series TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, layout INTEGER NOT NULL,
    vals BLOB NOT NULL, q BLOB);
CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts);
CREATE TABLE IF NOT EXISTS marks (reading INTEGER PRIMARY KEY, stored_ms INTEGER NOT NULL);
"""
# Pending samples that wake the writer before its interval (one big transaction is cheaper
# than many, but a burst should not wait for the timer).
_WAKE_AT = 20_000
_PRUNE_CHUNK = 50_000
_BIG_ENDIAN = sys.byteorder == "big"
# C-level field access: the writer's per-sample cost is what the history adds to the path.
_name_unit = attrgetter("name", "unit")
_value = attrgetter("value")
_quality = attrgetter("q")
_ts = attrgetter("ts")
_ALL_GOOD = {"good"}


def connect(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open (creating) a history database: WAL, the schema in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.executescript(_SCHEMA)
    return conn


class History:
    """See the module docstring. ``start()``, ``add_row()`` from any thread, ``stop()``."""

    def __init__(
        self, path: Path, settings: HistorySettings, clock_ms: Callable[[], int] = now_ms
    ) -> None:
        self.path = Path(path)
        self.settings = settings
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._pending: list[tuple[str, Sequence[Sample]]] = []
        self._pending_samples = 0
        self._declared: list[tuple[str, str, str]] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._done = threading.Condition(self._lock)
        self._requested = 0  # flush requests made / served (guarded by _lock)
        self._served = 0
        self._thread: threading.Thread | None = None
        self._ratelog = RateLimitedLog(log)
        self._counts = dict.fromkeys(
            ("committed", "dropped", "pruned_age", "pruned_size", "commits", "errors"), 0
        )
        self._rows = 0
        self._used_bytes = 0
        self._mark_minute = -1

    # -- any thread ------------------------------------------------------------------------

    def add_row(self, device: str, samples: Sequence[Sample]) -> None:
        """Record one reading's samples (kept together); never blocks on the disk."""
        if not samples:
            return
        n = len(samples)
        wake = False
        with self._lock:
            if self._pending_samples + n > self.settings.max_pending:
                self._counts["dropped"] += n
                drop = True
            else:
                self._pending.append((device, samples))
                self._pending_samples += n
                drop = False
                wake = self._pending_samples >= _WAKE_AT
        if drop:
            self._ratelog(logging.WARNING, "full", "history writer behind: %d sample(s) dropped", n)
        elif wake:
            self._wake.set()

    def declare(self, device: str, sensors: Sequence[SensorSpec]) -> None:
        """Record a device's sensors before its first sample, so an export of a history
        still empty has their columns (a task can read it; it holds no row yet)."""
        with self._lock:
            self._declared += [(device, s.name, s.unit) for s in sensors]
        self._wake.set()

    def add(self, device: str, sample: Sample) -> None:
        """Record one sample as a reading of its own."""
        self.add_row(device, (sample,))

    def flush(self, timeout: float = 10.0) -> bool:
        """Commit everything added so far; True once handled: committed, or dropped and
        counted on a storage error (False on timeout)."""
        with self._lock:
            self._requested += 1
            ticket = self._requested
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._served >= ticket, timeout)

    def stats(self) -> dict[str, int]:
        """Counters: committed, dropped, pending (samples), readings (stored), used_bytes,
        pruned_age and pruned_size (readings), commits, errors."""
        with self._lock:
            out = dict(self._counts)
            out["pending"] = self._pending_samples
            out["readings"] = self._rows
            out["used_bytes"] = self._used_bytes
        return out

    def start(self) -> None:
        """Open the database (on the writer thread) and start committing."""
        if self._thread is not None:
            raise RuntimeError("history already started")
        opened = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(opened,), name="site-history", daemon=True
        )
        self._thread.start()
        opened.wait(30)

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is pending, then close."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("history writer did not stop within %.0f s", timeout)

    # -- writer thread ---------------------------------------------------------------------

    def _main(self, opened: threading.Event) -> None:
        try:
            conn = connect(self.path, self.settings.synchronous)
        except sqlite3.Error as exc:
            log.error("history disabled: cannot open %s: %s", self.path, exc)
            opened.set()
            self._serve_forever_dropping()
            return
        try:
            self._load_ids(conn)
            rows = int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
            with self._lock:
                self._rows = rows
            opened.set()
            self._prune(self._prune_age, conn)
            next_prune = time.monotonic() + self.settings.prune_interval_s
            while True:
                self._wake.wait(self.settings.flush_interval_s)
                self._wake.clear()
                stopping = self._stopping.is_set()
                self._commit(conn)
                if time.monotonic() >= next_prune:
                    self._prune(self._prune_age, conn)
                    next_prune = time.monotonic() + self.settings.prune_interval_s
                if stopping:
                    self._commit(conn)
                    break
        finally:
            opened.set()
            conn.close()
            self._serve()

    def _serve_forever_dropping(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.settings.flush_interval_s)
            self._wake.clear()
            with self._lock:
                self._counts["dropped"] += self._pending_samples
                self._pending, self._pending_samples = [], 0
            self._serve()

    def _serve(self) -> None:
        with self._done:
            self._served = self._requested
            self._done.notify_all()

    def _take(self) -> tuple[list[tuple[str, Sequence[Sample]]], int]:
        with self._lock:
            batch = self._pending
            self._pending, self._pending_samples = [], 0
            ticket = self._requested
        return batch, ticket

    def _commit(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            declared, self._declared = self._declared, []
        for key in declared:
            if key not in self._series:
                try:
                    self._new_series(conn, key)
                except sqlite3.Error as exc:
                    log.warning("history: cannot record sensor %s: %s", key, exc)
        batch, ticket = self._take()
        if batch:
            try:
                n = self._write(conn, batch)
            except sqlite3.Error as exc:
                n = sum(len(s) for _, s in batch)
                with self._lock:
                    self._counts["dropped"] += n
                    self._counts["errors"] += 1
                self._ratelog(
                    logging.ERROR, "write", "history: %d sample(s) not stored: %s", n, exc
                )
            else:
                with self._lock:
                    self._counts["committed"] += n
                    self._counts["commits"] += 1
                self._prune(self._prune_size, conn)
        with self._done:
            self._served = max(self._served, ticket)
            self._done.notify_all()

    def _load_ids(self, conn: sqlite3.Connection) -> None:
        self._series = {
            (d, n, u): i for i, d, n, u in conn.execute("SELECT id, device, name, unit FROM series")
        }
        self._layouts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        names = {i: (n, u) for (_d, n, u), i in self._series.items()}
        for lid, device, series in conn.execute("SELECT id, device, series FROM layouts"):
            key = tuple(names[int(s)] for s in series.split(","))
            self._layouts[(device, key)] = lid

    def _write(self, conn: sqlite3.Connection, batch: list[tuple[str, Sequence[Sample]]]) -> int:
        rows: list[tuple[int, int, bytes, bytes | None]] = []
        layouts = self._layouts
        codes = QUALITY_CODES
        n = 0
        conn.execute("BEGIN")
        try:
            for device, samples in batch:
                for part in _by_ts(samples):
                    key = (device, tuple(map(_name_unit, part)))
                    lid = layouts.get(key)
                    if lid is None:
                        lid = self._new_layout(conn, key)
                    vals = array("d", map(_value, part))
                    if _BIG_ENDIAN:
                        vals.byteswap()
                    quality = set(map(_quality, part))
                    q = None if quality == _ALL_GOOD else bytes([codes[s.q] for s in part])
                    rows.append((part[0].ts, lid, vals.tobytes(), q))
                    n += len(part)
            conn.executemany("INSERT INTO readings (ts, layout, vals, q) VALUES (?, ?, ?, ?)", rows)
            now = self._clock_ms()
            if now // 60_000 != self._mark_minute:
                conn.execute("INSERT OR REPLACE INTO marks SELECT max(id), ? FROM readings", (now,))
            conn.execute("COMMIT")
            self._mark_minute = now // 60_000
        except BaseException:
            conn.execute("ROLLBACK")
            self._load_ids(conn)  # ids created in the rolled-back transaction are gone
            raise
        with self._lock:
            self._rows += len(rows)
        return n

    def _new_layout(
        self, conn: sqlite3.Connection, key: tuple[str, tuple[tuple[str, str], ...]]
    ) -> int:
        device, names = key
        ids = []
        for name, unit in names:
            sid = self._series.get((device, name, unit))
            if sid is None:
                sid = self._new_series(conn, (device, name, unit))
            ids.append(str(sid))
        cur = conn.execute(
            "INSERT INTO layouts (device, series) VALUES (?, ?)", (device, ",".join(ids))
        )
        lid = int(cur.lastrowid or 0)
        self._layouts[key] = lid
        return lid

    def _new_series(self, conn: sqlite3.Connection, key: tuple[str, str, str]) -> int:
        cur = conn.execute("INSERT INTO series (device, name, unit) VALUES (?, ?, ?)", key)
        sid = int(cur.lastrowid or 0)
        self._series[key] = sid
        return sid

    def _used(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _prune(self, how: Callable[[sqlite3.Connection], None], conn: sqlite3.Connection) -> None:
        try:
            how(conn)
        except sqlite3.Error as exc:  # e.g. a full disk; the next commit tries again
            with self._lock:
                self._counts["errors"] += 1
            self._ratelog(logging.ERROR, "prune", "history: pruning failed: %s", exc)

    def _prune_size(self, conn: sqlite3.Connection) -> None:
        used = self._used(conn)
        with self._lock:
            self._used_bytes = used
            rows = self._rows
        if used <= self.settings.max_bytes or rows == 0:
            return
        # Readings take roughly equal space: drop the earliest stored share that brings the
        # pages in use to 90 % of the bound.
        keep = int(rows * 0.9 * self.settings.max_bytes / used)
        n = max(1, rows - keep)
        row = conn.execute("SELECT id FROM readings ORDER BY id LIMIT 1 OFFSET ?", (n - 1,))
        last = row.fetchone()
        if last is None:
            return
        deleted = self._delete(conn, last[0])
        used = self._used(conn)
        with self._lock:
            self._counts["pruned_size"] += deleted
            self._used_bytes = used
        log.info(
            "history over %d bytes: pruned the %d earliest stored reading(s)",
            self.settings.max_bytes,
            deleted,
        )

    def _prune_age(self, conn: sqlite3.Connection) -> None:
        cutoff = self._clock_ms() - int(self.settings.max_age_days * 86_400_000)
        row = conn.execute("SELECT max(reading) FROM marks WHERE stored_ms <= ?", (cutoff,))
        last = row.fetchone()[0]
        if last is None:
            return
        deleted = self._delete(conn, last)
        if deleted:
            with self._lock:
                self._counts["pruned_age"] += deleted
                self._used_bytes = self._used(conn)
            log.info(
                "history: pruned %d reading(s) stored over %g days ago",
                deleted,
                self.settings.max_age_days,
            )

    def _delete(self, conn: sqlite3.Connection, last: int) -> int:
        """Delete the readings stored up to id ``last`` (and their marks)."""
        conn.execute("DELETE FROM marks WHERE reading <= ?", (last,))
        total = 0
        while True:  # in chunks: a long first prune must not hold one huge transaction
            cur = conn.execute(
                "DELETE FROM readings WHERE id IN (SELECT id FROM readings WHERE id <= ? "
                f"ORDER BY id LIMIT {_PRUNE_CHUNK})",
                (last,),
            )
            total += cur.rowcount
            with self._lock:
                self._rows -= cur.rowcount
            if cur.rowcount < _PRUNE_CHUNK:
                return total


def _by_ts(samples: Sequence[Sample]) -> Iterator[Sequence[Sample]]:
    """A reading's samples, split where their timestamps differ (rare: sources stamp a
    row once)."""
    if len(set(map(_ts, samples))) == 1:
        yield samples
        return
    start = 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or samples[i].ts != samples[start].ts:
            yield samples[start:i]
            start = i


@dataclass(frozen=True)
class Reading:
    """One reading read back: its samples' sensor names, units, values and qualities."""

    id: int
    ts: int
    device: str
    names: tuple[str, ...]
    units: tuple[str, ...]
    values: tuple[float, ...]
    quality: tuple[str, ...]


def read_readings(
    conn: sqlite3.Connection, devices: Sequence[str] | None = None, since_ms: int = 0
) -> Iterator[Reading]:
    """The readings of ``devices`` (None: all) from ``since_ms`` on, oldest first."""
    names = {i: (n, u) for i, n, u in conn.execute("SELECT id, name, unit FROM series")}
    layouts: dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
    for lid, device, series in conn.execute("SELECT id, device, series FROM layouts"):
        if devices is None or device in devices:
            pairs = [names[int(s)] for s in series.split(",")]
            layouts[lid] = (device, tuple(n for n, _ in pairs), tuple(u for _, u in pairs))
    if not layouts:
        return
    marks = ",".join("?" * len(layouts))
    cur = conn.execute(
        f"SELECT id, ts, layout, vals, q FROM readings WHERE layout IN ({marks}) AND ts >= ? "
        "ORDER BY ts, id",
        [*layouts, since_ms],
    )
    for rid, ts, lid, vals, q in cur:
        device, cols, units = layouts[lid]
        values = array("d")
        values.frombytes(vals)
        if _BIG_ENDIAN:
            values.byteswap()
        quality = ("good",) * len(cols) if q is None else tuple(_QUALITY_NAMES[c] for c in q)
        yield Reading(rid, ts, device, cols, units, tuple(values), quality)


@dataclass(frozen=True)
class DeviceHistory:
    """What the history holds of one device."""

    device: str
    readings: int
    first_ms: int | None
    last_ms: int | None
    sensors: tuple[str, ...]


def device_summary(conn: sqlite3.Connection) -> list[DeviceHistory]:
    """Per device (sorted by name): readings held, the oldest and newest time, sensors."""
    counts = {
        device: (n, first, last)
        for device, n, first, last in conn.execute(
            "SELECT l.device, count(*), min(r.ts), max(r.ts) FROM readings r "
            "JOIN layouts l ON l.id = r.layout GROUP BY l.device"
        )
    }
    sensors: dict[str, list[str]] = {}
    for device, name in conn.execute("SELECT device, name FROM series ORDER BY id"):
        names = sensors.setdefault(device, [])
        if name not in names:
            names.append(name)
    return [
        DeviceHistory(d, *counts.get(d, (0, None, None)), tuple(sensors.get(d, ())))
        for d in sorted({*counts, *sensors})
    ]
