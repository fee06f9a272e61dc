"""One thread that watches the store for every open dashboard tab.

Each ``interval`` (1 s) it reads, read-only and cheaply (an indexed lookup or the newest rows
only), what changed: site states (computed now, so a site going stale needs no write),
new site events, dead letters, rounds and runs, alarms (raised, cleared, acknowledged: one
aggregate over the small ``alarms`` table, the rows only when it changed), and new samples
of the sites whose charts are on screen. Each change becomes a numbered event in a ring;
every tab's SSE stream replays the ring after the id it last saw (``Last-Event-ID``) so a
reconnect misses nothing the ring still holds, and is told ``reset`` (reload everything)
otherwise. Ids start at the hub's start time in ms, so ids of a restarted daemon are
larger and an id from before the restart is older than the ring: ``reset``.

The hub polls only while at least one tab's stream is open (:meth:`attach`); when the
first tab comes back after none was open it starts again from what is stored then (and
a tab resuming an id from before is told ``reset``). ``/metrics`` takes its ingest rates
from the rowid deltas between scrapes (:meth:`rate_point`). All tabs together cost one
poll: the bench (tests/bench/bench_dashboard.py) measures the daemon's ingest with one
tab open against none.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from coordinator.store import read
from fedmq_runtime.clock import now_ms

__all__ = ["Hub"]

log = logging.getLogger(__name__)

RING = 5_000  # events kept for reconnecting tabs
SAMPLES_PER_POLL = 5_000  # telemetry rows read per poll for the charts on screen
PRIME_MARGIN_MS = 5_000  # alarms changed this long before the first tab: announced again
SAMPLES_BEHIND = 50_000  # further behind than this: skip ahead (charts show what is new)


class Hub:
    """The shared poller; :meth:`start` it, :meth:`stop` it with the server."""

    def __init__(self, db: Path, interval: float = 1.0) -> None:
        self.db, self.interval = Path(db), interval
        self.first_id = now_ms()
        self._next = self.first_id
        self._ring: deque[tuple[int, str, str]] = deque(maxlen=RING)
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self._watch: Counter[str] = Counter()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-hub", daemon=True)
        self._states: dict[str, str] = {}
        self._alarms: dict[int, tuple[Any, ...]] = {}
        self._attached_at = 0
        self._marks: dict[str, Any] = {}
        self._samples_at = 0
        self._rate_points: deque[tuple[float, int, int]] = deque(maxlen=64)
        self.polls = 0
        self.poll_s = 0.0  # CPU time spent polling, in all
        self.tabs = 0
        self._primed = False

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Hub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        with self.changed:
            self.changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(5)

    @property
    def stopped(self) -> bool:
        return self._halt.is_set()

    # -- tabs -----------------------------------------------------------------------

    def attach(self) -> None:
        """A tab's stream opened: poll (while any is open)."""
        with self._lock:
            if self.tabs <= 0:
                self._attached_at = now_ms()
            self.tabs += 1

    def detach(self) -> None:
        with self._lock:
            self.tabs -= 1

    def watch(self, sites: list[str]) -> None:
        """A tab shows charts of ``sites``: read their new samples (until :meth:`unwatch`)."""
        with self._lock:
            self._watch.update(sites)

    def unwatch(self, sites: list[str]) -> None:
        with self._lock:
            self._watch.subtract(sites)
            self._watch = +self._watch  # drop zero counts

    def since(self, last: int | None) -> tuple[list[tuple[int, str, str]], bool]:
        """Events after id ``last`` and whether the tab must reload (``last`` is older
        than the ring or from another daemon start). None: a new tab, nothing to replay."""
        with self._lock:
            if last is None:
                return [], False
            oldest = self._ring[0][0] if self._ring else self._next
            if last >= self._next or last < oldest - 1:
                return [], True
            return [e for e in self._ring if e[0] > last], False

    @property
    def last_id(self) -> int:
        with self._lock:
            return self._next - 1

    def publish(self, kind: str, data: Any) -> None:
        payload = json.dumps(data, separators=(",", ":"), default=str)
        with self.changed:
            self._ring.append((self._next, kind, payload))
            self._next += 1
            self.changed.notify_all()

    def rate_point(self, marks: dict[str, int]) -> None:
        """Record the store's high-water marks now (each poll, and each /metrics scrape)."""
        with self._lock:
            self._rate_points.append((time.monotonic(), marks["messages"], marks["telemetry"]))

    def rates(self) -> tuple[float, float]:
        """Messages and samples stored per second over the last ~10 s (or between the
        last two scrapes when no tab is open)."""
        with self._lock:
            points = list(self._rate_points)
        if len(points) < 2:
            return 0.0, 0.0
        end = points[-1]
        start = next((p for p in points if end[0] - p[0] <= 10.0), points[0])
        if start is end:
            start = points[-2]
        dt = end[0] - start[0]
        if dt <= 0:
            return 0.0, 0.0
        return (end[1] - start[1]) / dt, (end[2] - start[2]) / dt

    # -- the poll -------------------------------------------------------------------

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._halt.is_set():
            if self.tabs <= 0:  # nobody watches: cost the daemon nothing
                if conn is not None:
                    conn.close()
                    conn = None
                self._halt.wait(self.interval)
                continue
            started = time.thread_time()
            try:
                if conn is None:
                    conn = read.open_db(self.db)
                    self._prime(conn)
                self.poll(conn)
            except (sqlite3.Error, read.DatabaseMissing) as exc:
                log.debug("dashboard poll: %s", exc)
                if conn is not None:
                    conn.close()
                conn = None
            except Exception:
                log.exception("dashboard poll failed")
            self.polls += 1
            self.poll_s += time.thread_time() - started
            self._halt.wait(self.interval)
        if conn is not None:
            conn.close()

    def _prime(self, conn: sqlite3.Connection) -> None:
        """Start from what is stored now: only later changes are events. After an idle
        spell the ring is emptied and an id skipped, so a tab resuming an older id resets."""
        if self._primed:
            with self._lock:
                self._ring.clear()
                self._next += 1
        self._primed = True
        self._marks = dict(read.high_water(conn))
        self._samples_at = self._marks["telemetry"]
        self._states = {s["site"]: s["state"] for s in read.site_states(conn)}
        self._marks["rounds"] = read.rounds_high_water(conn)
        self._marks["runs"] = self._runs_mark(conn)
        # Alarms changed shortly before the first tab attached may be newer than what that
        # tab loaded (it loads, then opens its stream, and the first poll comes up to an
        # interval later): announce them once more rather than miss one.
        recent = self._attached_at - PRIME_MARGIN_MS
        view = self._alarm_view(conn)
        self._alarms = {i: v for i, v in view.items() if max(v[1] or 0, v[2] or 0) < recent}
        self._marks["alarms"] = read.alarm_mark(conn) if len(self._alarms) == len(view) else ()

    @staticmethod
    def _runs_mark(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
        from coordinator.store import training_read

        return [(r["run_id"], r["state"], r["aggregated"]) for r in training_read.runs(conn, 20)]

    def poll(self, conn: sqlite3.Connection) -> None:
        marks = read.high_water(conn)
        self.rate_point(marks)
        # Site states: computed now (a site goes stale without any write).
        changed = []
        for s in read.site_states(conn):
            if self._states.get(s["site"]) != s["state"]:
                changed.append(s | {"was": self._states.get(s["site"])})
                self._states[s["site"]] = s["state"]
        if changed:
            self.publish("sites", changed)
        if marks["site_events"] > self._marks.get("site_events", 0):
            new = read.events_after(conn, self._marks.get("site_events", 0))
            if new:
                self.publish("events", new)
        if marks["dead_letters"] > self._marks.get("dead_letters", 0):
            self.publish(
                "dead_letters", {"new": marks["dead_letters"] - self._marks["dead_letters"]}
            )
        rounds = read.rounds_high_water(conn)
        if rounds != self._marks.get("rounds"):
            self._marks["rounds"] = rounds
            runs = self._runs_mark(conn)
            self._marks["runs"] = runs
            self.publish("rounds", {"runs": [r[0] for r in runs]})
        else:
            runs = self._runs_mark(conn)
            if runs != self._marks.get("runs"):
                self._marks["runs"] = runs
                self.publish("rounds", {"runs": [r[0] for r in runs]})
        self._poll_alarms(conn)
        self._marks.update(marks)
        self._samples(conn, marks["telemetry"])

    @staticmethod
    def _alarm_view(conn: sqlite3.Connection) -> dict[int, tuple[Any, ...]]:
        return {i: (a["state"], a["updated_at"], a["acked_at"], a) for i, a in
                read.alarms_by_id(conn).items()}  # fmt: skip

    def _poll_alarms(self, conn: sqlite3.Connection) -> None:
        """Publish ``alarms``: each changed alarm's row with ``change`` new / active /
        cleared / acked, and how many are active now."""
        mark = read.alarm_mark(conn)
        if mark == self._marks.get("alarms"):
            return
        self._marks["alarms"] = mark
        view = self._alarm_view(conn)
        changed = []
        for i, (state, updated, acked, row) in view.items():
            old = self._alarms.get(i)
            if old is None:
                change = "new" if state == "active" else state
            elif old[:2] != (state, updated):
                change = state
            elif old[2] != acked and acked is not None:
                change = "acked"
            else:
                continue
            changed.append(row | {"change": change})
        self._alarms = view
        if changed:
            active = sum(v[0] == "active" for v in view.values())
            self.publish("alarms", {"alarms": changed, "active": active})

    def _samples(self, conn: sqlite3.Connection, newest: int) -> None:
        with self._lock:
            watched = list(self._watch)
        if not watched:
            self._samples_at = newest
            return
        if newest - self._samples_at > SAMPLES_BEHIND:
            self._samples_at = newest - SAMPLES_PER_POLL
        rows, self._samples_at = read.samples_after(
            conn, self._samples_at, watched, SAMPLES_PER_POLL
        )
        by_site: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_site.setdefault(r.pop("site"), []).append(r)
        for site, samples in by_site.items():
            self.publish("samples", {"site": site, "samples": samples})
