"""The writer thread: decode, store in batches, commit, then ack.

Everything the coordinator persists goes through this one thread, which owns the store.
Per batch (bounded by ``batch_size`` items and ``batch_time_s``): decode each inbound
message (rejects become dead letters), apply status/registration/heartbeats, insert durable
messages idempotently, commit, and only then send the PUBACKs and each touched site's
application :class:`schemas.Ack`. Sites without a stored registration get ``cmd/rebirth``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from coordinator.bus import Inbound
from coordinator.ingest.acks import AckTracker, clip_gap
from coordinator.ingest.admission import Admission, Limits
from coordinator.ingest.batch import Batch, durable_row
from coordinator.ingest.deadletters import DeadLetters
from coordinator.ingest.liveness import SiteLiveness
from coordinator.ingest.streams import Role, Streams
from coordinator.ingest.writer_process import (
    CachedTopics,
    Stored,
    WriterError,
    WriterProcess,
    decode_telemetry,
    predecode,
    telemetry_row,
)
from coordinator.settings import CoordinatorSettings
from coordinator.store import (
    AlarmRow,
    DurableRow,
    EventRow,
    HeartbeatRow,
    SiteDeploymentRow,
    SiteRecord,
    Store,
)
from coordinator.store.open import unavailable_errors
from fedmq_runtime.logs import RateLimiter
from schemas import (
    Ack,
    Alarm,
    Cleared,
    Codec,
    DecodeError,
    DeploymentStatus,
    Heartbeat,
    Prediction,
    RebirthCommand,
    Registration,
    SiteStatus,
    TelemetryBatch,
    Topics,
    encode,
    now_ms,
)
from schemas.errors import TopicError
from schemas.topics import Channel

__all__ = ["Ingestor", "Publish"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], None]
_STOP = object()
_JOB = "/job/"  # in the topic of a site's job status or result (P/site/{id}/job/{job}/...)
_DAY_MS = 86_400_000
# Channels a site publishes on: what admission control weighs.
_FROM_SITES = frozenset(
    {
        Channel.STATUS,
        Channel.REGISTRATION,
        Channel.HEARTBEAT,
        Channel.TELEMETRY,
        Channel.PREDICTION,
        Channel.ALARM,
        Channel.DEPLOYMENT,
        Channel.JOB_STATUS,
        Channel.JOB_RESULT,
    }
)


class _Tick:
    __slots__ = ("now",)

    def __init__(self, now: int) -> None:
        self.now = now


class _Prepared:
    """A batch admitted and its telemetry handed to the writer process."""

    __slots__ = ("admitted", "answered", "b", "held", "items", "later", "sent")

    def __init__(
        self,
        items: list[Any],
        b: Batch,
        admitted: list[Inbound],
        sent: list[Inbound],
        later: list[_Tick],
    ) -> None:
        self.items, self.b, self.admitted, self.sent, self.later = items, b, admitted, sent, later
        self.answered = False  # the writer process's answer was read
        self.held = False  # submitted with hold, not released yet


_LEAD = object()  # in the inbound queue: this instance now holds the leader lock
_FOLLOWER_RELOAD_S = 5.0  # how often a follower re-reads the sites the leader keeps


class _Budget:
    """At most ``rate`` events a second in all, with a burst of ``rate``."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.tokens, self.at = rate, clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Ingestor:
    """Owns the store on its own thread; feed it with :attr:`inbound` items.

    A failure while applying a batch never ends the thread: the transaction is rolled
    back, the in-memory state reloaded from the store (which is the truth: nothing of the
    batch was acked), a dead writer process restarted, and the batch applied again one
    message at a time, so that a message the store refuses becomes a dead letter with the
    reason and the others are stored. Storage that is unavailable (disk full, I/O error)
    is retried with backoff, holding the batch unacked.
    """

    _inflight: _Prepared | None = None  # a batch whose telemetry the writer process stores

    def __init__(
        self,
        store: Store,
        settings: CoordinatorSettings,
        session: int,
        publish: Publish,
        ack: Callable[[int, int], None],
        inbound: queue.SimpleQueue[Any],
        sign: Callable[[RebirthCommand], RebirthCommand] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store, self.settings, self.session = store, settings, session
        self.publish, self.ack, self.inbound, self.sign = publish, ack, inbound, sign
        self.clock = clock
        self.topics = Topics(settings.mqtt.prefix)
        self.codec = Codec(CachedTopics(settings.mqtt.prefix), settings.mqtt.max_payload)
        self.liveness = SiteLiveness(settings.patience)
        self.dead = DeadLetters()
        self.admission = Admission(
            Limits(
                settings.site_bytes_per_s,
                settings.site_burst_bytes,
                settings.site_max_devices,
                settings.max_unregistered_sites,
            ),
            {},
        )
        self.tracker = AckTracker()
        self.streams = Streams()
        self.sites: dict[str, SiteRecord] = {}
        # The current state of every alarm (site, device, alarm id), as stored.
        self.alarms: dict[tuple[str, str, str], AlarmRow] = {}
        self._unregistered = 0
        self._rebirth = RateLimiter(settings.rebirth_interval_s, clock=time.monotonic)
        self._rebirth_budget = _Budget(settings.rebirth_per_s)
        self._site_prefix = self.topics.prefix + "/site/"
        db = getattr(store, "path", None)
        # What means "the storage is unavailable" (retry) rather than "this message is
        # refused" (dead letter): sqlite3's, and psycopg's on PostgreSQL.
        self._unavailable = (
            unavailable_errors(db) if db is not None else (sqlite3.OperationalError,)
        )
        self.writer: WriterProcess | None = None
        if settings.writer_process and db is not None:
            self.writer = WriterProcess(db, settings.mqtt.prefix, settings.mqtt.max_payload)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_purge: float | None = None  # first tick purges
        self.failed: BaseException | None = None
        # Several instances on one database (settings.ingest_group): each stores the share
        # of the telemetry the broker gives it and acks what the database says is
        # contiguous; only the leader keeps sites, streams, liveness and rebirth.
        self.shared = bool(settings.ingest_group)
        self.leading = not self.shared
        self._carry: dict[str, SiteRecord] = {}  # a leader's acks to save with the next batch
        self._reloaded = 0.0
        self.stored_messages = 0
        self.recoveries = 0
        # Called on this thread right after each commit with the job messages (status,
        # result, chunk) it stored for the first time: the round driver's feed.
        self.on_job_messages: Callable[[list[DurableRow]], None] | None = None
        self.load()

    def load(self) -> None:
        """Restore sites, streams and ack state from the store (at startup, and after a
        failed batch was rolled back)."""
        self.store.meta_set("patience", str(self.settings.patience))
        self.sites = {rec.site: rec for rec in self.store.load_sites()}
        self._unregistered = sum(1 for r in self.sites.values() if r.registration is None)
        self.tracker = AckTracker()
        self.streams = Streams()
        rows = self.store.load_streams()
        self.streams.load(rows)
        for row in rows:
            self.tracker.load(
                (row.site, row.epoch),
                row.acked,
                self.store.seqs_above(row.site, row.acked, row.epoch),
                self.store.gaps_above(row.site, row.acked, row.epoch),
            )
        self.alarms = {(a.site, a.device, a.alarm_id): a for a in self.store.load_alarms()}
        self._carry = {}
        self.admission.devices = self.store.load_devices()
        self.admission.new_devices = []
        self.store.commit()

    # Thread --------------------------------------------------------------------------

    def start(self) -> None:
        if self.writer is not None and not self.writer.started:
            self.writer.start()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued work, commit, and stop the thread."""
        self.inbound.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
        self._stopping.set()
        if self.writer is not None:
            self.writer.stop()

    def tick(self, now: int) -> None:
        """Ask for a liveness pass (called by the :class:`LivenessChecker` thread)."""
        self.inbound.put(_Tick(now))

    def step_down(self) -> None:
        """The leader lost its lock: from the next batch on, act as a follower (store and
        ack telemetry only) while the daemon stops. Any thread."""
        if self.shared:
            self.leading = False

    def lead(self) -> None:
        """This instance won the leader lock: from the next batch on it keeps sites,
        streams, liveness and rebirth (state reloaded from the database first). Call it
        before subscribing to the leader's topics, so that their messages come after."""
        self.inbound.put(_LEAD)

    def _run(self) -> None:
        while True:
            try:
                if not self._batch():
                    return
            except Exception:  # a bug, not bad input: say so, keep going (nothing was acked)
                self.recoveries += 1
                log.exception("writer thread: unexpected failure; carrying on")
            except BaseException as exc:
                self.failed = exc
                log.exception("writer thread failed; nothing more is acked")
                return

    def _batch(self) -> bool:
        """Collect one batch and process it; False once stopped.

        Pipelined with the writer process: while it stores batch N's telemetry, the next
        items are collected and their telemetry decoded here (:func:`predecode`); once N
        is committed there, N+1 is admitted and submitted *before* N's own writes, commit
        and acks, so the child is not idle meanwhile. Acks still follow both commits of a
        batch. The child decodes N+1 but writes only once N is committed here (``hold``,
        ``release``): the two never wait for each other's write lock, and this connection
        never waits for the child inside a write transaction."""
        prev, self._inflight = self._inflight, None
        if prev is None:
            items, pre = self._collect(self.inbound.get()), dict[int, bytes]()
        else:
            items, pre = self._collect_while_busy()
        nxt: _Prepared | None = None
        flushed = prev is None  # prev committed and acked
        done = not items  # items committed and acked, or in flight
        try:
            if prev is not None:
                self._account(prev)
                if any(item is _LEAD for item in items):  # its load() follows N's commit
                    self._flush(prev.b)
                    flushed = True
            if items:
                # Devices first seen in N+1 are stored with N+1, not in N's commit.
                devices, self.admission.new_devices = self.admission.new_devices, []
                nxt = self._submit(items, self.writer is not None, pre, hold=not flushed)
                devices, self.admission.new_devices = self.admission.new_devices, devices
            if prev is not None and not flushed:
                self._flush(prev.b)
                flushed = True
                if nxt is not None and nxt.held:
                    nxt.held = False
                    assert self.writer is not None
                    self.writer.release()
            if nxt is not None:
                self.admission.new_devices += devices
                self._decode_rest(nxt)
                if nxt.sent and items[-1] is not _STOP:
                    self._inflight = nxt
                else:
                    self._account(nxt)
                    self._flush(nxt.b)
                done = True
        except Exception as exc:
            self._inflight = None
            cause: Exception = exc
            redo = ([] if flushed else prev.items if prev else []) + ([] if done else items)
            with contextlib.suppress(sqlite3.Error, *self._unavailable):
                self.store.rollback()  # never wait for the child in a write transaction
            if nxt is not None and nxt.sent and not nxt.answered and self.writer is not None:
                try:
                    if nxt.held:
                        self.writer.release()
                    self.writer.results()
                except WriterError as err:
                    cause = err  # restart it
            self._recover(cause)
            self._one_by_one(redo)
        return items[-1] is not _STOP if items else True

    def _collect(self, first: Any) -> list[Any]:
        """A batch: ``first`` and what follows within batch_size and batch_time_s."""
        items = [first]
        deadline = time.monotonic() + self.settings.batch_time_s
        limit = self.settings.batch_size
        # A round driver waits on job messages (statuses, results): a batch holding one
        # commits as soon as nothing more is queued, instead of lingering batch_time_s for
        # more telemetry (~50 ms of every round's close, measured in bench_rounds).
        urgent = False
        while len(items) < limit and items[-1] is not _STOP:
            urgent = urgent or _JOB in getattr(items[-1], "topic", "")
            try:
                items.append(self.inbound.get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or urgent:
                    break
                try:
                    items.append(self.inbound.get(timeout=remaining))
                except queue.Empty:
                    break
        return items

    def _collect_while_busy(self) -> tuple[list[Any], dict[int, bytes]]:
        """The next batch (what is queued once the writer process answers, up to
        batch_size). With the asyncio receive path, what is already queued while the child
        stores the current batch is decoded here meanwhile (by item id), as long as this
        thread gets a core: on a machine short of CPU the extra work of handing decoded
        rows over (~0.6 us per sample) would cost more than the parallel decode gains.
        Otherwise (paho, whose network thread needs the GIL for every message, or nothing
        queued) the thread just waits for the child, as it did before the pipeline."""
        assert self.writer is not None
        items: list[Any] = []
        pre: dict[int, bytes] = {}
        limit = self.settings.batch_size
        if self.settings.receive == "asyncio":
            wall = cpu = 0.0
            while len(items) < limit and not self.writer.ready():
                try:
                    item = self.inbound.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                if item is _STOP:
                    return items, pre
                if isinstance(item, Inbound) and self._offloads(item.topic):
                    t, c = time.perf_counter(), time.thread_time()
                    got = predecode(self.codec, item.topic, item.payload, item.received_at)
                    if got is not None:
                        pre[id(item)] = got
                    wall += time.perf_counter() - t
                    cpu += time.thread_time() - c
                    if wall > 0.01 and cpu < 0.7 * wall:
                        break  # this thread is not getting a core: leave it to the child
        self.writer.ready(None)
        while len(items) < limit and (not items or items[-1] is not _STOP):
            try:
                items.append(self.inbound.get_nowait())
            except queue.Empty:
                break
        return items, pre

    # One batch -----------------------------------------------------------------------

    def process(self, items: list[Any]) -> None:
        """Apply ``items``, commit, then ack. Public so tests can drive it directly."""
        try:
            self._process(items, self.writer is not None)
        except Exception as exc:
            self._recover(exc)
            self._one_by_one(items)

    def _recover(self, exc: BaseException) -> None:
        """Undo a failed batch: roll back, restart a dead writer process, reload."""
        self.recoveries += 1
        if isinstance(exc, WriterError):
            log.error("%s: restarting it; the batch is applied again", exc)
            assert self.writer is not None
            self.writer.stop(timeout=2.0)
            self.writer.start()
        else:
            log.warning("batch failed (%s: %s): rolled back", type(exc).__name__, exc)
        still_down: tuple[type[BaseException], ...] = (sqlite3.Error, *self._unavailable)
        try:
            self.store.rollback()
            self.load()
        except still_down as err:  # storage still unavailable: the retry waits for it
            log.error("reloading state after a failed batch: %s", err)

    def _one_by_one(self, items: list[Any]) -> None:
        """Apply each item alone, in process: a message the store refuses becomes a dead
        letter; unavailable storage is retried with backoff until it is back."""
        for item in items:
            delay = 0.5
            while True:
                try:
                    self._process([item], offload=False)
                    break
                except self._unavailable as exc:  # the storage, not the message
                    self._recover(exc)
                    log.error("storage unavailable (%s): retrying in %.1f s", exc, delay)
                    if self._stopping.wait(delay):
                        return
                    delay = min(delay * 2, 30.0)
                except Exception as exc:
                    self._recover(exc)
                    self._refuse(item, exc)
                    break

    def _refuse(self, item: Any, exc: Exception) -> None:
        """Dead-letter one inbound message the store refused (and PUBACK it)."""
        if not isinstance(item, Inbound):
            return
        b = Batch()
        b.mids.append((item.mid, item.qos))
        detail = f"{type(exc).__name__}: {exc}"
        b.dead.append(
            self.dead.reject(item.topic, item.payload, "storage_error", detail, item.received_at)
        )
        try:
            self._flush(b)
        except Exception as err:  # not even the dead letter: leave it unacked
            self.store.rollback()
            log.error("could not dead-letter a message on %s: %s", item.topic[:200], err)

    def _process(self, items: list[Any], offload: bool) -> None:
        """With a writer process, telemetry goes there first and the rest is decoded here
        meanwhile; ticks (which write) wait for its commit, as the writer
        process must never wait for a lock this connection holds."""
        p = self._submit(items, offload)
        self._decode_rest(p)
        self._account(p)
        self._flush(p.b)

    def _submit(
        self,
        items: list[Any],
        offload: bool,
        pre: dict[int, bytes] | None = None,
        hold: bool = False,
    ) -> _Prepared:
        """Admit ``items`` and hand their telemetry to the writer process (``pre``: what
        :func:`predecode` made of some, by item id; ``hold``: it waits for release()
        before it writes)."""
        b = Batch()
        admitted: list[Inbound] = []
        later: list[_Tick] = []
        now = time.monotonic()
        if self.shared and not self.leading and any(item is _LEAD for item in items):
            self.load()  # what the previous leader and the other workers committed
            self.leading = True  # only once loaded: a failed load is tried again
            log.info("leading: sites, liveness and rebirth are this instance's now")
        for item in items:
            if isinstance(item, Inbound):
                if not self.leading and not self._offloads(item.topic):
                    # Not a follower's: a session kept from when this instance led, or a
                    # leader stepping down. The leader gets its own copy; PUBACK it only.
                    b.mids.append((item.mid, item.qos))
                elif self._admit(item, b, now):
                    admitted.append(item)
            elif isinstance(item, _Tick):
                later.append(item)
        sent: list[Inbound] = []
        if offload and self.writer is not None:
            sent = [i for i in admitted if self._offloads(i.topic)]
            if sent:
                if not self.writer.started:
                    self.writer.start()
                pre = pre or {}
                self.writer.submit(
                    [pre.get(id(i)) or (i.topic, i.payload, i.received_at) for i in sent], hold
                )
        p = _Prepared(items, b, admitted, sent, later)
        p.held = hold and bool(sent)
        return p

    def _decode_rest(self, p: _Prepared) -> None:
        """Decode and apply here what did not go to the writer process."""
        for item in p.admitted:
            if p.sent and self._offloads(item.topic):
                continue
            p.b.mids.append((item.mid, item.qos))
            self._inbound(item, p.b)

    def _account(self, p: _Prepared) -> None:
        """The writer process's answer (once it committed) and the ticks, before the flush."""
        b = p.b
        if p.sent:
            assert self.writer is not None
            p.answered = True
            for item, stored in zip(p.sent, self.writer.results(), strict=True):
                b.mids.append((item.mid, item.qos))
                if stored is None:  # not stored there: rejected, or not telemetry
                    self._inbound(item, b)
                else:
                    self._telemetry(stored, item.received_at, b)
        for tick in p.later:
            self._tick(tick.now, b)

    def _offloads(self, topic: str) -> bool:
        return topic.startswith(self._site_prefix) and "/telemetry/" in topic

    def _admit(self, item: Inbound, b: Batch, now: float) -> bool:
        """Weigh a message by its topic before decoding it (see coordinator/ingest/admission.py);
        a refused one is PUBACKed here and reported."""
        if not item.topic.startswith(self._site_prefix):
            return True
        try:
            parsed = self.codec.topics.parse(item.topic)
        except TopicError:
            return True  # decoding dead-letters it with the precise reason
        if parsed.channel not in _FROM_SITES or parsed.site is None:
            return True
        site = parsed.site
        known = site in self.sites or site in b.new_sites
        unregistered = self._unregistered + len(b.new_sites)
        verdict = self.admission.check(
            parsed, len(item.payload), item.retain, known, unregistered, now
        )
        if verdict is None:
            if not known:
                b.new_sites.add(site)
            return True
        b.mids.append((item.mid, item.qos))
        if verdict.action == "reject":
            b.dead.append(
                self.dead.reject(
                    item.topic, item.payload, verdict.reason, verdict.detail, item.received_at
                )
            )
            if verdict.reason == "retained_durable" and item.payload:
                b.clear_retained.add(item.topic)
        count = self.admission.report(site, verdict.reason)
        if count is not None and verdict.reason != "site_limit":  # dead letters say it
            why = f"{verdict.detail} ({count} message(s) since the last report)"
            b.events.append(EventRow(site, item.received_at, verdict.reason, None, None, why))
        return False

    def _telemetry(self, stored: Stored, at: int, b: Batch) -> None:
        """Account for a telemetry message stored (by the writer process, or in
        ``b.durable`` for this batch's commit)."""
        site, epoch, seq, gaps, historical = stored
        if not self.leading:  # a follower stores and acks; the leader keeps the sites
            b.committed.append((site, epoch, seq))
            if gaps:
                b.gaps.append((site, epoch, seq, gaps, at))
            return
        rec = self._site(site, at)
        rec.last_seen = max(rec.last_seen, at)
        b.touched[site] = rec
        self._observe(rec, epoch, at, not historical, b)
        b.committed.append((site, epoch, seq))
        if gaps:
            b.gaps.append((site, epoch, seq, gaps, at))
        if rec.registration is None:
            b.needs_registration.add(site)

    def _observe(self, rec: SiteRecord, epoch: str, at: int, live: bool, b: Batch) -> Role:
        quiet_ms = self.settings.patience * rec.interval_s * 1000
        role = self.streams.observe(rec, epoch, at, live, b.events, quiet_ms)
        if role is Role.NEW:
            rec.acked = self.tracker.acked((rec.site, epoch))
        return role

    def _inbound(self, item: Inbound, b: Batch) -> None:
        topic = item.topic
        if (topic.endswith("/ack") or "/cmd/" in topic) and topic.startswith(self._site_prefix):
            levels = topic[len(self._site_prefix) :].split("/")
            # Our own acks and commands (MQTT 3.1.1 has no noLocal): nothing to store.
            if (len(levels) == 2 and levels[1] == "ack") or (
                len(levels) == 3 and levels[1] == "cmd"
            ):
                return
        try:
            msg = decode_telemetry(self.codec, topic, item.payload) or self.codec.decode(
                topic, item.payload
            )
        except DecodeError as exc:
            b.dead.append(
                self.dead.reject(
                    topic, item.payload, exc.reason.value, exc.detail, item.received_at
                )
            )
            return
        at = item.received_at
        if isinstance(msg, Cleared):
            self._cleared(msg, at, b)
            return
        if isinstance(msg, TelemetryBatch):
            b.durable.append(telemetry_row(msg, at))
            gaps = tuple((g.first, g.last) for g in msg.gaps)
            self._telemetry((msg.site, msg.epoch, msg.seq, gaps, msg.historical), at, b)
            return
        rec = self._site(msg.site, at)
        rec.last_seen = max(rec.last_seen, at)
        b.touched[rec.site] = rec
        if msg.kind in ("job_status", "job_result", "result_chunk", "prediction", "deployment"):
            self._observe(rec, msg.epoch, at, not msg.historical, b)
            payload = item.payload.decode()
            if isinstance(msg, Prediction):
                b.durable.append(durable_row(msg, at, msg.device, None, (), payload))
            elif isinstance(msg, DeploymentStatus):
                b.durable.append(durable_row(msg, at, None, None, (), payload))
                b.deployments.append((msg, at))
            else:
                b.durable.append(durable_row(msg, at, None, msg.job_id, (), payload))  # type: ignore[union-attr]
            b.committed.append((msg.site, msg.epoch, msg.seq))
            gaps = tuple((g.first, g.last) for g in msg.gaps)  # type: ignore[union-attr]
            if gaps:
                b.gaps.append((msg.site, msg.epoch, msg.seq, gaps, at))
        elif isinstance(msg, Alarm):
            self._alarm(msg, at, b)
        elif isinstance(msg, Heartbeat):
            role = self._observe(rec, msg.epoch, at, True, b)
            self._heartbeat(rec, msg, at, b, role)
        elif isinstance(msg, SiteStatus):
            role = self._observe(rec, msg.epoch, at, msg.state == "online", b)
            if role is Role.OLDER:
                log.info("site %s: %s status of older stream %s ignored", rec.site, msg.state,
                         msg.epoch or "-")  # fmt: skip
            else:
                b.events += self.liveness.on_status(rec, msg.state, msg.session, at, msg.reason)
        elif isinstance(msg, Registration):
            self._observe(rec, msg.epoch, at, True, b)
            if rec.registration is None:
                b.events.append(EventRow(rec.site, at, "registered", None, None, msg.name))
                self._unregistered -= 1
            rec.registration = item.payload.decode()
            rec.interval_s = msg.heartbeat_interval_s
        b.needs_registration.add(rec.site)

    def _heartbeat(self, rec: SiteRecord, msg: Heartbeat, at: int, b: Batch, role: Role) -> None:
        b.heartbeats.append(
            HeartbeatRow(
                msg.site,
                at,
                msg.ts,
                msg.session,
                msg.interval_s,
                msg.uptime_s,
                msg.cpu_percent,
                msg.mem_percent,
                msg.disk_percent,
                msg.outbox_depth,
                msg.outbox_bytes,
                msg.outbox_dropped,
                msg.last_acked,
                msg.jobs_running,
                msg.epoch,
                msg.samples_dropped,
                msg.outbox_error,
            )
        )
        key = (rec.site, msg.epoch)
        if self.shared and self.tracker.acked(key) < msg.last_acked:
            # Behind the site: the other workers stored and acked more; the database
            # says how much (so the base below moves only when nothing is stored).
            start = max(self.tracker.acked(key), self.store.stream_acked(*key))
            self.tracker.load(key, self.store.contiguous_acked(rec.site, msg.epoch, start))
        if self.tracker.heartbeat_base(key, msg.last_acked):
            why = f"nothing stored: contiguous ack starts at the site's last_acked {msg.last_acked}"
            b.events.append(EventRow(rec.site, at, "ack_base", None, None, why, msg.session))
            self.streams.acked(rec.site, msg.epoch, self.tracker.acked(key))
        if self.shared or msg.last_acked < self.tracker.acked(key):
            # Its last ack may have been lost: say it again. With several workers, read
            # it from the database: the others may have moved it on.
            b.ack_streams.add(key)
        if role is Role.OLDER:
            return  # another process with this site id: its health is not the site's
        rec.outbox_depth, rec.outbox_dropped = msg.outbox_depth, msg.outbox_dropped
        rec.last_acked_reported, rec.jobs_running = msg.last_acked, msg.jobs_running
        rec.cpu_percent, rec.mem_percent = msg.cpu_percent, msg.mem_percent
        rec.disk_percent = msg.disk_percent
        if msg.outbox_error != rec.outbox_error:
            if msg.outbox_error:
                why = f"outbox cannot store: {msg.outbox_error}"
                b.events.append(EventRow(rec.site, at, "outbox_error", None, None, why))
            else:
                b.events.append(
                    EventRow(rec.site, at, "outbox_recovered", None, None, "outbox stores again")
                )
        rec.outbox_error, rec.samples_dropped = msg.outbox_error, msg.samples_dropped
        rec.acked = self.tracker.acked(key)
        b.events += self.liveness.on_heartbeat(rec, msg.session, msg.interval_s, at)

    def _alarm(self, msg: Alarm, at: int, b: Batch) -> None:
        """Keep the alarm's current state; an event for each transition (a repeat of the
        same state, e.g. the retained message again after a restart, is none)."""
        key = (msg.site, msg.device, msg.alarm_id)
        prev = self.alarms.get(key)
        if prev is not None and msg.ts < prev.ts:
            return  # older than the state we hold (a late or replayed message)
        row = AlarmRow(
            msg.site, msg.device, msg.alarm_id, msg.state, msg.severity, msg.rule, msg.value,
            msg.model_version, msg.since, msg.ts, at,
        )  # fmt: skip
        self.alarms[key] = b.alarms[key] = row
        was = "cleared" if prev is None else prev.state
        if msg.state != was:
            value = "" if msg.value is None else f", value {msg.value:g}"
            model = f", model {msg.model_version}" if msg.model_version else ""
            why = f"{msg.device}/{msg.alarm_id} {msg.severity}: {msg.rule or '-'}{value}{model}"
            b.events.append(
                EventRow(msg.site, at, f"alarm_{msg.state}", was, msg.state, why, msg.session)
            )

    def _deployment(self, msg: DeploymentStatus, at: int, b: Batch) -> None:
        """Keep the latest state of a deployment at a site (an older status, by ``since``
        then seq, never overwrites a newer one) and an event for each transition."""
        cur = self.store.site_deployment(msg.site, msg.deployment_id)
        if cur is not None and cur.seq is not None and (msg.since, msg.seq) < (cur.since, cur.seq):
            return  # a late status: the stored one is newer
        was = cur.state if cur is not None else None
        activated = cur.activated_at if cur is not None else None
        if msg.state == "active" and (was != "active" or activated is None):
            activated = msg.since  # became active now (a repeat keeps the first time)
        row = SiteDeploymentRow(
            msg.site, msg.deployment_id, msg.model_version, msg.task, msg.state, msg.reason,
            msg.since, msg.previous_version, at, activated, msg.epoch, msg.seq,
        )  # fmt: skip
        self.store.save_site_deployments([row])
        if msg.state != was:
            what = f"{msg.deployment_id}: {msg.model_version} ({msg.task})"
            if msg.rollback:
                what += " rollback"
            if msg.previous_version and msg.state == "active":
                what += f", was {msg.previous_version}"
            why = f"{what}: {msg.reason}" if msg.reason else what
            b.events.append(
                EventRow(msg.site, at, f"deployment_{msg.state}", was, msg.state, why[:500],
                         msg.session)
            )  # fmt: skip

    def _alarm_cleared(self, site: str, device: str, at: int, b: Batch) -> None:
        """The site cleared a device's retained alarm topic: its active alarms end."""
        for key, row in list(self.alarms.items()):
            if key[0] == site and key[1] == device and row.state == "active":
                self.alarms[key] = b.alarms[key] = row._replace(state="cleared", updated_at=at)
                why = f"{device}/{row.alarm_id}: retained alarm cleared by the site"
                b.events.append(EventRow(site, at, "alarm_cleared", "active", "cleared", why))

    def _cleared(self, msg: Cleared, at: int, b: Batch) -> None:
        site = msg.topic.site
        if site is None or site not in self.sites:
            return
        if msg.topic.channel is Channel.ALARM:
            self._alarm_cleared(site, msg.topic.device or "", at, b)
            return
        rec = self.sites[site]
        what = msg.topic.channel.value
        if what == "registration":
            if rec.registration is not None:
                self._unregistered += 1
            rec.registration = None
        else:
            rec.status = None
            b.events += self.liveness.refresh(rec, at)
        b.events.append(EventRow(site, at, "deregistered", None, None, f"{what} cleared"))
        b.touched[site] = rec

    def _site(self, site: str, at: int) -> SiteRecord:
        rec = self.sites.get(site)
        if rec is None:
            rec = self.sites[site] = SiteRecord(site=site, first_seen=at)
            self._unregistered += 1
        return rec

    def _tick(self, now: int, b: Batch) -> None:
        if not self.leading:
            # A follower's admission control weighs sites as the leader last saved them.
            if time.monotonic() - self._reloaded >= _FOLLOWER_RELOAD_S:
                self._reloaded = time.monotonic()
                self.sites = {rec.site: rec for rec in self.store.load_sites()}
                self._unregistered = sum(1 for r in self.sites.values() if r.registration is None)
            return
        for rec in self.sites.values():
            events = self.liveness.refresh(rec, now)
            if events:
                b.events += events
                b.touched[rec.site] = rec
        self.store.meta_set("alive_at", str(now))
        last = self._last_purge
        if last is None or time.monotonic() - last >= self.settings.purge_interval_s:
            self._last_purge = time.monotonic()
            s = self.settings
            hb, tel, msgs = self.store.purge(
                now - int(s.heartbeat_retention_days * _DAY_MS),
                now - int(s.telemetry_retention_days * _DAY_MS),
            )
            if hb or tel or msgs:
                log.info(
                    "retention: purged %d heartbeats, %d telemetry samples (%d messages)",
                    hb, tel, msgs,
                )  # fmt: skip

    def _flush(self, b: Batch) -> None:
        store = self.store
        for site, rec in self._carry.items():
            b.touched.setdefault(site, rec)
        self._carry = {}
        new = store.add_messages(b.durable)
        if b.deployments:  # only statuses stored for the first time: a resend changes nothing
            fresh = {(r.site, r.epoch, r.seq) for r in new if r.kind == "deployment"}
            for status, at in b.deployments:
                if (status.site, status.epoch, status.seq) in fresh:
                    self._deployment(status, at, b)
        self.stored_messages += len(b.committed)
        by_stream: dict[tuple[str, str], list[int]] = {}
        for site, epoch, seq in b.committed:
            by_stream.setdefault((site, epoch), []).append(seq)
        for site, epoch, seq, gaps, at in b.gaps:
            self._gaps(site, epoch, seq, gaps, at, b)
        for key, seqs in by_stream.items():
            if not self.shared:  # with several workers the database says (_db_acks)
                self.tracker.committed(key, seqs)
            b.ack_streams.add(key)
        for site, epoch in b.ack_streams if self.leading else ():
            acked = self.tracker.acked((site, epoch))
            self.streams.acked(site, epoch, acked)
            store.purge_gaps(site, epoch, acked)
            rec = self.sites[site]
            if epoch == rec.epoch:
                rec.acked = acked
                b.touched[site] = rec
        if self.admission.new_devices:
            store.add_devices((s, d, self.clock()) for s, d in self.admission.new_devices)
            self.admission.new_devices = []
        store.add_heartbeats(b.heartbeats)
        store.add_events(b.events)
        store.add_dead_letters(b.dead)
        if b.alarms:
            store.save_alarms(b.alarms.values())
        store.save_sites(b.touched.values())
        store.save_streams(self.streams.take_dirty())
        store.commit()
        acks = self._db_acks(b.ack_streams) if self.shared else None
        if self.on_job_messages is not None and new:
            jobs = [r for r in new if r.job_id is not None]
            if jobs:
                self.on_job_messages(jobs)
        # Committed: now the broker and the sites may forget these messages.
        for mid, qos in b.mids:
            self.ack(mid, qos)
        for site, epoch in b.ack_streams:
            acked = self.tracker.acked((site, epoch)) if acks is None else acks[(site, epoch)]
            ack = Ack(site=site, epoch=epoch, session=self.session, acked=acked)
            self.publish(self.topics.ack(site), encode(ack), 1, False)
        for topic in b.clear_retained:
            self.publish(topic, b"", 1, True)
        for site in b.needs_registration:
            if self.sites[site].registration is None:
                self._send_rebirth(site)

    def _db_acks(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Each stream's ack as the database has it after this batch's commit, the other
        workers' commits included. Read after committing: of two workers committing at
        once, the later reader sees both. A leader saves what moved with its next batch."""
        store, out = self.store, {}
        for site, epoch in keys:
            key = (site, epoch)
            start = max(self.tracker.acked(key), store.stream_acked(site, epoch))
            acked = out[key] = store.contiguous_acked(site, epoch, start)
            self.tracker.load(key, acked)
            if self.leading:
                self.streams.acked(site, epoch, acked)
                rec = self.sites.get(site)
                if rec is not None and epoch == rec.epoch and rec.acked != acked:
                    rec.acked = acked
                    self._carry[site] = rec
        store.commit()  # ends the read (PostgreSQL opened a transaction for it)
        return out

    def _gaps(
        self,
        site: str,
        epoch: str,
        seq: int,
        gaps: tuple[tuple[int, int], ...],
        at: int,
        b: Batch,
    ) -> None:
        """Count the ranges a message announces as dropped: only between the stream's
        current ack and the message's own seq, merged, one event per message."""
        key = (site, epoch)
        acked = self.tracker.acked(key)
        ranges = [r for r in (clip_gap(f, last, acked, seq) for f, last in gaps) if r]
        if not ranges:
            return
        new = 0
        for first, last in ranges:
            if self.store.add_gap(site, first, last, at, epoch):
                new += last - first + 1
            self.tracker.gap(key, first, last)
        b.ack_streams.add(key)
        if new:
            if len(ranges) == 1:
                first, last = ranges[0]
                why = f"site dropped seq {first}-{last} ({new} messages) by its outbox policy"
            else:
                why = f"site dropped {new} messages in {len(ranges)} ranges by its outbox policy"
            b.events.append(EventRow(site, at, "gap", None, None, why))

    def _send_rebirth(self, site: str) -> None:
        if not self._rebirth.allow(site)[0] or not self._rebirth_budget.allow():
            return
        cmd = RebirthCommand(
            site=site,
            session=self.session,
            cmd_id=uuid.uuid4().hex,
            expires_at=self.clock() + 60_000,
        )
        if self.sign is not None:
            cmd = self.sign(cmd)
        log.info("site %s: traffic without a registration, sending cmd/rebirth", site)
        self.publish(self.topics.cmd(site, "rebirth"), encode(cmd), 1, False)
