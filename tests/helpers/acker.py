"""A minimal coordinator stand-in for site tests: store durable messages, then ack.

Like DESIGN.md says: insert idempotently on (site, epoch, seq), commit, then publish the
highest contiguous committed seq of that stream (counting announced ``gaps`` as done) as
``schemas.Ack`` with the stream's ``epoch`` on ``Topics.ack(site)``. paho callbacks
only enqueue; one thread owns the SQLite connection.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from schemas import (
    DURABLE_KINDS,
    Ack,
    Cleared,
    Codec,
    CoordinatorStatus,
    DecodeError,
    Topics,
    encode,
)

__all__ = ["Acker", "Stored"]


@dataclass(frozen=True)
class Stored:
    site: str
    seq: int
    kind: str
    historical: bool
    payload: dict
    epoch: str = ""


class Acker:
    """Start with ``start()``, stop with ``stop()``; read what it stored with ``stored()``."""

    def __init__(self, port: int, prefix: str, db_path: Path, ack: bool = True) -> None:
        self.topics = Topics(prefix)
        self.codec = Codec(self.topics)
        self.db_path = Path(db_path)
        self.port = port
        self.ack_enabled = ack
        self.received = 0
        self.duplicates = 0
        self.heartbeats: list[dict] = []
        self._q: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"acker-{uuid.uuid4().hex[:8]}"
        )
        self._client.reconnect_delay_set(0.1, 1.0)
        self.session = 0
        will = CoordinatorStatus(site="coordinator", session=0, state="offline")
        self._client.will_set(self.topics.coordinator_status(), encode(will), qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_message = lambda c, u, m: self._q.put((m.topic, bytes(m.payload)))
        self._thread = threading.Thread(target=self._run, name="acker", daemon=True)
        # Per stream (site, epoch); _epoch: the latest stream seen per site.
        self._contig: dict[tuple[str, str], int] = {}
        self._gaps: dict[tuple[str, str], set[int]] = {}
        self._epoch: dict[str, str] = {}
        self.connected = threading.Event()

    def _on_connect(self, client, userdata, flags, rc, properties=None):  # type: ignore[no-untyped-def]
        # Like the coordinator: a retained online status per connection, so sites replay.
        self.session += 1
        client.subscribe(f"{self.topics.prefix}/site/+/#", qos=1)
        online = CoordinatorStatus(site="coordinator", session=self.session, state="online")
        client.publish(self.topics.coordinator_status(), encode(online), qos=1, retain=True)
        self.connected.set()

    def start(self) -> Acker:
        self._thread.start()
        self._client.connect_async("127.0.0.1", self.port, keepalive=10)
        self._client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("acker could not connect")
        return self

    def stop(self) -> None:
        offline = CoordinatorStatus(site="coordinator", session=self.session, state="offline")
        info = self._client.publish(
            self.topics.coordinator_status(), encode(offline), qos=1, retain=True
        )
        info.wait_for_publish(2)
        self._client.disconnect()
        self._client.loop_stop()
        self._q.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        db = sqlite3.connect(str(self.db_path), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS rows (site TEXT, seq INTEGER, kind TEXT, "
            "historical INTEGER, payload TEXT, epoch TEXT, PRIMARY KEY (site, epoch, seq))"
        )
        while True:
            item = self._q.get()
            batch = [item]
            while item is not None and len(batch) < 1000:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            touched: set[tuple[str, str]] = set()
            db.execute("BEGIN")
            for entry in batch:
                if entry is None:
                    continue
                site = self._store(db, *entry)
                if site is not None:
                    touched.add(site)
            db.execute("COMMIT")
            for site in touched:
                self._ack(db, site)
            if None in batch:
                db.close()
                return

    def _store(self, db: sqlite3.Connection, topic: str, payload: bytes) -> tuple[str, str] | None:
        try:
            msg = self.codec.decode(topic, payload)
        except DecodeError:
            return None
        if isinstance(msg, Cleared):
            return None
        if msg.kind == "heartbeat":
            self.heartbeats.append(json.loads(payload))
            return None
        if msg.kind not in DURABLE_KINDS:
            return None
        self.received += 1
        cur = db.execute(
            "INSERT OR IGNORE INTO rows VALUES (?, ?, ?, ?, ?, ?)",
            (msg.site, msg.seq, msg.kind, int(msg.historical), payload.decode(), msg.epoch),
        )
        if cur.rowcount == 0:
            self.duplicates += 1
        stream = (str(msg.site), msg.epoch)
        self._epoch[stream[0]] = msg.epoch
        gaps = self._gaps.setdefault(stream, set())
        for g in msg.gaps:
            gaps.update(range(g.first, g.last + 1))
        return stream

    def _ack(self, db: sqlite3.Connection, stream: tuple[str, str]) -> None:
        if not self.ack_enabled:
            return
        site, epoch = stream
        acked = self._contig.get(stream, 0)
        gaps = self._gaps.get(stream, set())
        have = {
            s
            for (s,) in db.execute(
                "SELECT seq FROM rows WHERE site = ? AND epoch = ? AND seq > ?",
                (site, epoch, acked),
            )
        }
        while acked + 1 in have or acked + 1 in gaps:
            acked += 1
        self._contig[stream] = acked
        ack = Ack(site=site, epoch=epoch, session=1, acked=acked)
        self._client.publish(self.topics.ack(site), encode(ack), qos=1)

    def _stream(self, site: str, epoch: str | None) -> tuple[str, str]:
        return (site, self._epoch.get(site, "") if epoch is None else epoch)

    def gap_seqs(self, site: str, epoch: str | None = None) -> set[int]:
        """Announced gaps of ``site``'s stream ``epoch`` (default: the latest one seen)."""
        return set(self._gaps.get(self._stream(site, epoch), set()))

    def acked(self, site: str, epoch: str | None = None) -> int:
        """The ack sent for ``site``'s stream ``epoch`` (default: the latest one seen)."""
        return self._contig.get(self._stream(site, epoch), 0)

    def stored(self, site: str, epoch: str | None = None) -> list[Stored]:
        """Everything stored for ``site`` (of stream ``epoch`` if given), in seq order."""
        if not self.db_path.exists():
            return []
        db = sqlite3.connect(str(self.db_path))
        try:
            where, args = (
                ("site = ?", (site,))
                if epoch is None
                else (
                    "site = ? AND epoch = ?",
                    (site, epoch),
                )
            )
            rows = db.execute(
                "SELECT site, seq, kind, historical, payload, epoch FROM rows "
                f"WHERE {where} ORDER BY seq",
                args,
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()
        return [Stored(s, q, k, bool(h), json.loads(p), e) for s, q, k, h, p, e in rows]
