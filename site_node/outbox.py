"""The durable outbox: every durable message is stored before it is published.

One thread owns the SQLite connection (WAL); other threads talk to it through a queue.
A row is deleted only when the coordinator's ``ack`` covers its ``seq`` (never on PUBACK).
On (re)connect and when the coordinator comes online every unacked row is replayed in
``seq`` order with ``historical=true``, paced by a token bucket so live rows go first.
Rows sent longer than ``ack_timeout_s`` ago without an ack are re-sent. The outbox is
bounded by rows, bytes and age; rows dropped by policy are recorded as gaps and announced
in the ``gaps`` field of every durable message until the coordinator acks past them.

The stream ``epoch`` is created with the database (see ``outbox_store.open_epoch``); only
acks of this epoch delete rows. A storage failure (a full disk) never ends the thread: the
transaction is rolled back, telemetry that cannot be stored is dropped and counted before
it gets a seq (job messages wait in memory), and the outbox retries by itself every second
(see ``outbox_health``). The queue from other threads holds at most ``max_queued``
droppable messages; past that ``append`` refuses at once instead of growing or blocking.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from schemas import now_ms
from site_node.outbox_health import OutboxHealth, OutboxRefused
from site_node.outbox_store import (
    OutboxStats,
    connect,
    load_meta,
    open_epoch,
    probe_write,
    read_stats,
    with_flags,
)
from site_node.settings import OutboxSettings

__all__ = [
    "MAX_QUEUED",
    "PROTECTED_KINDS",
    "Outbox",
    "OutboxRefused",
    "OutboxStats",
    "PayloadBuilder",
    "Publisher",
    "read_stats",
]


log = logging.getLogger(__name__)

# Never dropped by the overflow policy: a lost job outcome or deployment state change
# cannot be recomputed (predictions can: they are dropped and announced like telemetry).
PROTECTED_KINDS = frozenset({"job_status", "job_result", "result_chunk", "deployment"})
_PROTECTED_SQL = ", ".join(f"'{k}'" for k in sorted(PROTECTED_KINDS))
PayloadBuilder = Callable[[int], bytes]
_BATCH = 2000
# Droppable messages waiting for the outbox thread (at 100 samples each, ~100k samples).
MAX_QUEUED = 1000


class Publisher(Protocol):
    """What the outbox needs from the bus."""

    @property
    def connected(self) -> bool: ...

    def has_room(self) -> bool: ...

    def wait_room(self, timeout: float) -> bool: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool: ...


@dataclass
class _Append:
    kind: str
    topic: str
    build: PayloadBuilder
    future: Future[int]
    samples: int = 0


class Outbox:
    """SQLite-backed durable queue of one site; see the module docstring."""

    def __init__(
        self,
        path: Path,
        limits: OutboxSettings,
        publisher: Publisher,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.path = Path(path)
        self.limits = limits
        self._pub = publisher
        self._q: queue.Queue[object] = queue.Queue()
        self._max_queued = max_queued
        self._queued = 0  # droppable appends in _q
        self._queued_lock = threading.Lock()
        self._health = OutboxHealth()
        self._epoch = ""
        self._thread: threading.Thread | None = None
        self._stats = OutboxStats()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        # Owned by the outbox thread only:
        self._live: deque[tuple[int, str, bytes]] = deque()
        self._sent: dict[int, float] = {}  # seq -> monotonic time of last send, send order
        self._replay: list[float] | None = None  # [cursor, until, sent_before]
        self._tokens = 0.0
        self._token_at = time.monotonic()
        self._gaps: list[list[int]] = []
        self._held: list[_Append] = []  # protected appends waiting for storage to work
        self._ack_due = 0  # an ack that could not be stored yet
        self._stop_flush: float | None = None

    # -- public, any thread ----------------------------------------------------------------

    def start(self) -> None:
        """Open the database on the outbox thread; returns once it is ready."""
        self._thread = threading.Thread(target=self._main, name="site-outbox", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("outbox did not open within 30 s")
        if self._stopped.is_set():
            raise RuntimeError(f"outbox {self.path} could not be opened")

    def stop(self, flush_s: float = 2.0) -> None:
        """Persist everything queued, try to publish live rows for ``flush_s``, close."""
        self._q.put(("stop", flush_s))
        if self._thread is not None:
            self._thread.join(flush_s + 30)

    @property
    def epoch(self) -> str:
        """This outbox's stream epoch (known once :meth:`start` returned)."""
        return self._epoch

    def append(self, kind: str, topic: str, build: PayloadBuilder, samples: int = 0) -> Future[int]:
        """Queue a durable message; ``build(seq)`` makes its payload on the outbox thread.

        The future resolves to the ``seq`` once the row is committed (before publishing),
        or fails with :class:`OutboxRefused` when a droppable message cannot be stored
        (its ``samples`` are then counted as dropped). Never blocks.
        """
        fut: Future[int] = Future()
        if kind not in PROTECTED_KINDS:
            with self._queued_lock:
                full = self._queued >= self._max_queued
                if not full:
                    self._queued += 1
            if full:
                self._health.dropped(samples, "the queue to the outbox is full")
                fut.set_exception(OutboxRefused("the queue to the outbox is full"))
                return fut
        self._q.put(_Append(kind, topic, build, fut, samples))
        return fut

    def ack(self, acked: int, epoch: str | None = None) -> None:
        """The coordinator committed every seq up to ``acked`` of stream ``epoch``.

        An ack of another epoch is ignored (it is for an earlier stream of this site);
        ``None`` means this outbox's own stream.
        """
        self._q.put(("ack", (acked, epoch)))

    def connected(self) -> None:
        """A new broker connection: replay every unacked row."""
        self._q.put(("replay", None))

    def replay(self) -> None:
        """Replay every unacked row (e.g. the coordinator came back online)."""
        self._q.put(("replay", None))

    def stats(self) -> OutboxStats:
        health = self._health
        return replace(self._stats, samples_dropped=health.samples_dropped, error=health.error)

    # -- outbox thread ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._db = connect(self.path, self.limits.synchronous)
            self._epoch = open_epoch(self._db)
            self._load()
        except sqlite3.Error:
            log.exception("cannot open outbox %s", self.path)
            self._stopped.set()
            self._ready.set()
            return
        log.info("outbox %s: stream epoch %r, next seq %d", self.path, self._epoch, self._next_seq)
        self._ready.set()
        next_check = 0.0
        try:
            while self._stop_flush is None:
                try:
                    self._handle(self._drain(self._idle_timeout()))
                    self._pump()
                    now = time.monotonic()
                    if now >= next_check:
                        next_check = now + 1.0
                        self._periodic(now)
                except Exception:  # the outbox thread must outlive any one failure
                    log.exception("outbox loop failed; going on")
                    self._stopped.wait(0.5)
            self._flush(self._stop_flush)
        finally:
            self._db.close()
            self._stopped.set()

    def _load(self) -> None:
        meta = load_meta(self._db)
        self._next_seq = meta.get("next_seq", 1)
        self._last_acked = meta.get("last_acked", 0)
        self._dropped = meta.get("dropped", 0)
        self._gaps = [[a, b] for a, b in self._db.execute("SELECT * FROM gaps ORDER BY first")]
        self._rows, self._bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox"
        ).fetchone()
        self._snapshot()

    def _idle_timeout(self) -> float:
        if not self._pub.connected or not (self._live or self._replay):
            return 0.25
        if not self._pub.has_room():
            self._pub.wait_room(0.05)
            return 0.0
        return 0.0 if self._live else 0.01

    def _drain(self, timeout: float) -> list[object]:
        try:
            items = [self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()]
        except queue.Empty:
            return []
        while len(items) < _BATCH:
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                break
        taken = sum(1 for i in items if isinstance(i, _Append) and i.kind not in PROTECTED_KINDS)
        if taken:
            with self._queued_lock:
                self._queued -= taken
        return items

    def _handle(self, items: list[object]) -> None:
        appends: list[_Append] = []
        for item in items:
            if isinstance(item, _Append):
                appends.append(item)
                continue
            if appends:
                self._insert(appends)
                appends = []
            op, arg = item if isinstance(item, tuple) else ("", None)
            if op == "ack":
                self._on_ack(*arg)
            elif op == "replay":
                self._start_replay(sent_before=float("inf"))
            elif op == "stop":
                self._stop_flush = float(arg)
        if appends:
            self._insert(appends)

    def _write(self, body: Callable[[], None], proves: bool = True) -> bool:
        """Run ``body`` in one write transaction; False (rolled back) if storage failed.

        A success clears the storage error only if ``proves`` (``body`` wrote rows).
        """
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            body()
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # SQLite may already have rolled back (SQLITE_FULL does): ROLLBACK only if open.
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                self._load()
            except sqlite3.Error:
                log.debug("outbox rollback after a failed write", exc_info=True)
            self._health.failed(exc)
            return False
        if proves:
            self._health.ok()
        return True

    def _refuse(self, appends: list[_Append]) -> None:
        """Storage failed: job messages wait in memory, the rest is dropped and counted."""
        reason = self._health.error or "storage error"
        for a in appends:
            if a.future.done():  # its builder failed
                continue
            if a.kind in PROTECTED_KINDS:
                self._held.append(a)
            else:
                self._health.dropped(a.samples, reason)
                a.future.set_exception(OutboxRefused(reason))

    def _insert(self, appends: list[_Append]) -> None:
        if self._held:
            appends, self._held = self._held + appends, []
        created = now_ms()
        rows: list[tuple[int, str, str, bytes, int]] = []
        refused: list[int] = []
        done: list[tuple[_Append, int]] = []
        db = self._db

        def body() -> None:
            for a in appends:
                seq = self._next_seq
                self._next_seq += 1
                try:
                    payload = a.build(seq)
                except Exception as exc:  # a bad builder must not take the outbox down
                    log.exception("payload builder failed for %s", a.topic)
                    self._add_gap(seq, seq)
                    a.future.set_exception(exc)
                    continue
                done.append((a, seq))
                if self._must_refuse(a.kind, len(payload)):
                    refused.append(seq)
                    self._add_gap(seq, seq)
                    continue
                rows.append((seq, a.kind, a.topic, payload, created))
                self._rows += 1
                self._bytes += len(payload)
            db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?)", rows)
            if refused:
                self._dropped += len(refused)
            self._enforce_bounds(created)
            self._save_meta()

        if not self._write(body):
            self._refuse(appends)
            self._snapshot()
            return
        self._snapshot()
        if self._pub.connected:
            self._live.extend((s, t, p) for s, _k, t, p, _c in rows)
        if refused:
            log.warning("outbox full: dropped %d new rows (drop_newest)", len(refused))
        for a, seq in done:
            a.future.set_result(seq)

    def _must_refuse(self, kind: str, size: int) -> bool:
        if self.limits.policy != "drop_newest" or kind in PROTECTED_KINDS:
            return False
        return self._rows >= self.limits.max_rows or self._bytes + size > self.limits.max_bytes

    def _enforce_bounds(self, now: int) -> None:
        """drop_oldest: drop the oldest telemetry rows past the row/byte bounds; any policy:
        rows past the age bound."""
        cutoff = now - int(self.limits.max_age_s * 1000)
        over = self.limits.policy == "drop_oldest" and (
            self._rows > self.limits.max_rows or self._bytes > self.limits.max_bytes
        )
        if not over:
            oldest = self._oldest_ms()
            if oldest is None or oldest >= cutoff:
                return
        victims: list[int] = []
        cur = self._db.execute(
            f"SELECT seq, length(payload), created_ms FROM outbox WHERE kind NOT IN "
            f"({_PROTECTED_SQL}) ORDER BY seq"
        )
        rows, size = self._rows, self._bytes
        for seq, length, created in cur:
            too_many = self.limits.policy == "drop_oldest" and (
                rows > self.limits.max_rows or size > self.limits.max_bytes
            )
            if not too_many and created >= cutoff:
                break
            victims.append(seq)
            rows -= 1
            size -= length
        if not victims:
            return
        self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in victims])
        self._rows, self._bytes = rows, size
        self._dropped += len(victims)
        for seq in victims:
            self._add_gap(seq, seq)
            self._sent.pop(seq, None)
        gone = set(victims)
        if self._live and self._live[0][0] <= victims[-1]:
            self._live = deque(x for x in self._live if x[0] not in gone)
        log.warning("outbox bound reached: dropped %d oldest rows", len(victims))

    def _add_gap(self, first: int, last: int) -> None:
        if self._gaps and self._gaps[-1][1] + 1 >= first:
            self._gaps[-1][1] = max(self._gaps[-1][1], last)
        else:
            self._gaps.append([first, last])
            self._gaps.sort()

    def _save_meta(self) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [
                ("next_seq", self._next_seq),
                ("last_acked", self._last_acked),
                ("dropped", self._dropped),
            ],
        )
        self._db.execute("DELETE FROM gaps")
        self._db.executemany("INSERT INTO gaps VALUES (?, ?)", self._gaps)

    def _on_ack(self, acked: int, epoch: str | None) -> None:
        if epoch is not None and epoch != self._epoch:
            log.debug("ignored an ack of stream %r (this stream is %r)", epoch, self._epoch)
            return
        acked = min(acked, self._next_seq - 1)
        if acked <= self._last_acked:
            return
        db = self._db

        def body() -> None:
            n, size = db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox WHERE seq <= ?",
                (acked,),
            ).fetchone()
            db.execute("DELETE FROM outbox WHERE seq <= ?", (acked,))
            self._last_acked = acked
            self._gaps = [g for g in self._gaps if g[1] > acked]
            self._rows -= n
            self._bytes -= size
            self._save_meta()

        if not self._write(body, proves=False):
            self._ack_due = max(self._ack_due, acked)  # retried by _periodic
            return
        for seq in [s for s in self._sent if s <= acked]:
            del self._sent[seq]
        self._snapshot()

    def _start_replay(self, sent_before: float) -> None:
        self._live.clear()  # never-sent live rows are part of the replay
        self._replay = [self._last_acked + 1, self._next_seq - 1, sent_before]

    def _pump(self) -> None:
        pub = self._pub
        while self._live and pub.has_room():
            seq, topic, payload = self._live[0]
            if not pub.publish(topic, with_flags(payload, False, self._gaps)):
                return
            self._live.popleft()
            self._sent[seq] = time.monotonic()
        if self._replay is not None and pub.has_room():
            self._pump_replay()

    def _pump_replay(self) -> None:
        assert self._replay is not None
        now = time.monotonic()
        rate = self.limits.replay_rate
        self._tokens = min(max(rate / 10, 50.0), self._tokens + (now - self._token_at) * rate)
        self._token_at = now
        cursor, until, sent_before = self._replay
        budget = int(self._tokens)
        while budget > 0 and cursor <= until and self._pub.has_room():
            rows = self._db.execute(
                "SELECT seq, topic, payload FROM outbox WHERE seq >= ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (cursor, until, min(budget, 500)),
            ).fetchall()
            if not rows:
                cursor = until + 1
                break
            for seq, topic, payload in rows:
                last = self._sent.get(seq)
                if sent_before != float("inf") and (last is None or last > sent_before):
                    cursor = seq + 1
                    continue
                if not self._pub.publish(topic, with_flags(payload, True, self._gaps)):
                    budget = 0
                    break
                self._sent.pop(seq, None)
                self._sent[seq] = time.monotonic()
                self._tokens -= 1
                budget -= 1
                cursor = seq + 1
        self._replay = None if cursor > until else [cursor, until, sent_before]

    def _periodic(self, now: float) -> None:
        if self._ack_due > self._last_acked:
            due, self._ack_due = self._ack_due, 0
            self._on_ack(due, None)
        if self._held:
            self._insert([])  # job messages that could not be stored yet
        elif self._health.error is not None:
            self._write(lambda: probe_write(self._db))  # has space come back?
        if self._rows:
            before = self._dropped

            def body() -> None:
                self._enforce_bounds(now_ms())
                if self._dropped != before:
                    self._save_meta()

            self._write(body, proves=False)
            self._snapshot()
        if self._replay is None and self._sent and self._pub.connected:
            oldest = next(iter(self._sent.values()))
            if now - oldest > self.limits.ack_timeout_s:
                log.info("rows unacked for %.0f s: re-sending", self.limits.ack_timeout_s)
                self._replay = [
                    self._last_acked + 1,
                    self._next_seq - 1,
                    now - self.limits.ack_timeout_s,
                ]

    def _flush(self, flush_s: float) -> None:
        deadline = time.monotonic() + flush_s
        while self._live and self._pub.connected and time.monotonic() < deadline:
            self._pub.wait_room(0.05)
            self._pump()

    def _oldest_ms(self) -> int | None:
        # Rows are created in seq order, so the lowest seq is the oldest (PK lookup, no scan).
        row = self._db.execute("SELECT created_ms FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def _snapshot(self) -> None:
        oldest = self._oldest_ms() if self._rows else None
        self._stats = OutboxStats(
            self._rows,
            self._bytes,
            self._dropped,
            self._last_acked,
            self._next_seq - 1,
            oldest,
            self._epoch,
        )
