"""The writer thread: decode, store in batches, commit, then ack.

Everything the coordinator persists goes through this one thread, which owns the store.
Per batch (bounded by ``batch_size`` items and ``batch_time_s``): decode each inbound
message (rejects become dead letters), apply status/registration/heartbeats, insert durable
messages idempotently, commit, and only then send the PUBACKs and each touched site's
application :class:`schemas.Ack`. Sites without a stored registration get ``cmd/rebirth``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from coordinator.acks import AckTracker
from coordinator.bus import Inbound
from coordinator.deadletters import DeadLetters
from coordinator.ingest_batch import Batch, durable_row
from coordinator.liveness import SiteLiveness
from coordinator.log_setup import RateLimiter
from coordinator.settings import CoordinatorSettings
from coordinator.store import EventRow, HeartbeatRow, SiteRecord, Store
from coordinator.writer_proc import (
    CachedTopics,
    Stored,
    WriterProcess,
    decode_telemetry,
    telemetry_row,
)
from schemas import (
    Ack,
    Cleared,
    Codec,
    DecodeError,
    Heartbeat,
    RebirthCommand,
    Registration,
    SiteStatus,
    TelemetryBatch,
    Topics,
    encode,
    now_ms,
)

__all__ = ["Ingestor", "Publish"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], None]
_STOP = object()
_DAY_MS = 86_400_000


class _Tick:
    __slots__ = ("now",)

    def __init__(self, now: int) -> None:
        self.now = now


class Ingestor:
    """Owns the store on its own thread; feed it with :attr:`inbound` items."""

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
        self.tracker = AckTracker()
        self.dead = DeadLetters()
        self.sites: dict[str, SiteRecord] = {}
        self._rebirth = RateLimiter(settings.rebirth_interval_s, clock=time.monotonic)
        self._site_prefix = self.topics.prefix + "/site/"
        db = getattr(store, "path", None)
        self.writer: WriterProcess | None = None
        if settings.writer_process and db is not None:
            self.writer = WriterProcess(db, settings.mqtt.prefix, settings.mqtt.max_payload)
        self._thread: threading.Thread | None = None
        self._last_purge: float | None = None  # first tick purges
        self.failed: BaseException | None = None
        self.stored_messages = 0
        self.load()

    def load(self) -> None:
        """Restore sites and ack state from the store (at startup)."""
        self.store.meta_set("patience", str(self.settings.patience))
        for rec in self.store.load_sites():
            self.sites[rec.site] = rec
            self.tracker.load(
                rec.site,
                rec.acked,
                self.store.seqs_above(rec.site, rec.acked),
                self.store.gaps_above(rec.site, rec.acked),
            )
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
        if self.writer is not None:
            self.writer.stop()

    def tick(self, now: int) -> None:
        """Ask for a liveness pass (called by the :class:`LivenessChecker` thread)."""
        self.inbound.put(_Tick(now))

    def call(self, fn: Callable[[Store], Any]) -> Future[Any]:
        """Run ``fn(store)`` on the writer thread, committed with the next batch."""
        fut: Future[Any] = Future()
        self.inbound.put((fn, fut))
        return fut

    def _run(self) -> None:
        try:
            while self._batch():
                pass
        except BaseException as exc:
            self.failed = exc
            log.exception("writer thread failed; nothing more is acked")

    def _batch(self) -> bool:
        """Collect one batch and process it; False once stopped."""
        first = self.inbound.get()
        items = [first]
        deadline = time.monotonic() + self.settings.batch_time_s
        limit = self.settings.batch_size
        while len(items) < limit and items[-1] is not _STOP:
            try:
                items.append(self.inbound.get_nowait())
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    items.append(self.inbound.get(timeout=remaining))
                except queue.Empty:
                    break
        self.process(items)
        return items[-1] is not _STOP

    # One batch -----------------------------------------------------------------------

    def process(self, items: list[Any]) -> None:
        """Apply ``items``, commit, then ack. Public so tests can drive it directly.

        With a writer process, telemetry goes there first and the rest is decoded here
        meanwhile; ticks and calls (which write) wait for its commit, as the writer
        process must never wait for a lock this connection holds.
        """
        b = Batch()
        offload: list[Inbound] = []
        later: list[Any] = []
        if self.writer is not None:
            offload = [i for i in items if isinstance(i, Inbound) and self._offloads(i.topic)]
            if offload:
                if not self.writer.started:
                    self.writer.start()
                self.writer.submit([(i.topic, i.payload, i.received_at) for i in offload])
        for item in items:
            if isinstance(item, Inbound):
                if offload and self._offloads(item.topic):
                    continue
                b.mids.append((item.mid, item.qos))
                self._inbound(item, b)
            elif isinstance(item, (_Tick, tuple)):
                later.append(item)
        if offload:
            assert self.writer is not None
            for item, stored in zip(offload, self.writer.results(), strict=True):
                b.mids.append((item.mid, item.qos))
                if stored is None:  # not stored there: rejected, or not telemetry
                    self._inbound(item, b)
                else:
                    self._telemetry(stored, item.received_at, b)
        for item in later:
            if isinstance(item, _Tick):
                self._tick(item.now, b)
            else:
                fn, fut = item
                try:
                    fut.set_result(fn(self.store))
                except Exception as exc:
                    fut.set_exception(exc)
        self._flush(b)

    def _offloads(self, topic: str) -> bool:
        return topic.startswith(self._site_prefix) and "/telemetry/" in topic

    def _telemetry(self, stored: Stored, at: int, b: Batch) -> None:
        """Account for a telemetry message stored (by the writer process, or in
        ``b.durable`` for this batch's commit)."""
        site, seq, gaps = stored
        rec = self._site(site, at)
        rec.last_seen = max(rec.last_seen, at)
        b.touched[site] = rec
        b.committed.append((site, seq))
        if gaps:
            b.gaps.extend((site, first, last, at) for first, last in gaps)
        if rec.registration is None:
            b.needs_registration.add(site)

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
            self._telemetry((msg.site, msg.seq, gaps), at, b)
            return
        rec = self._site(msg.site, at)
        rec.last_seen = max(rec.last_seen, at)
        b.touched[rec.site] = rec
        if msg.kind in ("job_status", "job_result", "result_chunk"):
            payload = item.payload.decode()
            b.durable.append(durable_row(msg, at, None, msg.job_id, (), payload))  # type: ignore[union-attr]
            b.committed.append((msg.site, msg.seq))
            b.gaps.extend((msg.site, g.first, g.last, at) for g in msg.gaps)  # type: ignore[union-attr]
        elif isinstance(msg, Heartbeat):
            self._heartbeat(rec, msg, at, b)
        elif isinstance(msg, SiteStatus):
            b.events += self.liveness.on_status(rec, msg.state, msg.session, at, msg.reason)
        elif isinstance(msg, Registration):
            if rec.registration is None:
                b.events.append(EventRow(rec.site, at, "registered", None, None, msg.name))
            rec.registration = item.payload.decode()
            rec.interval_s = msg.heartbeat_interval_s
        b.needs_registration.add(rec.site)

    def _heartbeat(self, rec: SiteRecord, msg: Heartbeat, at: int, b: Batch) -> None:
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
            )
        )
        rec.outbox_depth, rec.outbox_dropped = msg.outbox_depth, msg.outbox_dropped
        rec.last_acked_reported, rec.jobs_running = msg.last_acked, msg.jobs_running
        rec.cpu_percent, rec.mem_percent = msg.cpu_percent, msg.mem_percent
        rec.disk_percent = msg.disk_percent
        b.events += self.liveness.on_heartbeat(rec, msg.session, msg.interval_s, at)
        if self.tracker.heartbeat_base(rec.site, msg.last_acked):
            why = f"nothing stored: contiguous ack starts at the site's last_acked {msg.last_acked}"
            b.events.append(EventRow(rec.site, at, "ack_base", None, None, why, msg.session))
        if msg.last_acked < self.tracker.acked(rec.site):
            b.ack_sites.add(rec.site)  # its last ack may have been lost: say it again

    def _cleared(self, msg: Cleared, at: int, b: Batch) -> None:
        site = msg.topic.site
        if site is None or site not in self.sites:
            return
        rec = self.sites[site]
        what = msg.topic.channel.value
        if what == "registration":
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
        return rec

    def _tick(self, now: int, b: Batch) -> None:
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
        store.add_messages(b.durable)
        self.stored_messages += len(b.committed)
        by_site: dict[str, list[int]] = {}
        for site, seq in b.committed:
            by_site.setdefault(site, []).append(seq)
        for site, first, last, at in b.gaps:
            if store.add_gap(site, first, last, at):
                size = last - first + 1
                why = f"site dropped seq {first}-{last} ({size} messages) by its outbox policy"
                b.events.append(EventRow(site, at, "gap", None, None, why))
            self.tracker.gap(site, first, last)
            b.ack_sites.add(site)
        for site, seqs in by_site.items():
            self.tracker.committed(site, seqs)
            b.ack_sites.add(site)
        for site in b.ack_sites:
            rec = self.sites[site]
            rec.acked = self.tracker.acked(site)
            b.touched[site] = rec
        store.add_heartbeats(b.heartbeats)
        store.add_events(b.events)
        store.add_dead_letters(b.dead)
        store.save_sites(b.touched.values())
        store.commit()
        # Committed: now the broker and the sites may forget these messages.
        for mid, qos in b.mids:
            self.ack(mid, qos)
        for site in b.ack_sites:
            ack = Ack(site=site, session=self.session, acked=self.tracker.acked(site))
            self.publish(self.topics.ack(site), encode(ack), 1, False)
        for site in b.needs_registration:
            if self.sites[site].registration is None:
                self._send_rebirth(site)

    def _send_rebirth(self, site: str) -> None:
        if not self._rebirth.allow(site)[0]:
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
