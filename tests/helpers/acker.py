"""A minimal coordinator stand-in for site tests: store durable messages, then ack.

Like DESIGN.md says: insert idempotently on (site, seq), commit, then publish the highest
contiguous committed seq (counting announced ``gaps`` as done) as ``schemas.Ack`` on
``Topics.ack(site)``. paho callbacks only enqueue; one thread owns the SQLite connection.
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
        self._contig: dict[str, int] = {}
        self._gaps: dict[str, set[int]] = {}
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
            "historical INTEGER, payload TEXT, PRIMARY KEY (site, seq))"
        )
        while True:
            item = self._q.get()
            batch = [item]
            while item is not None and len(batch) < 1000:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            touched: set[str] = set()
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

    def _store(self, db: sqlite3.Connection, topic: str, payload: bytes) -> str | None:
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
            "INSERT OR IGNORE INTO rows VALUES (?, ?, ?, ?, ?)",
            (msg.site, msg.seq, msg.kind, int(msg.historical), payload.decode()),
        )
        if cur.rowcount == 0:
            self.duplicates += 1
        gaps = self._gaps.setdefault(msg.site, set())
        for g in msg.gaps:
            gaps.update(range(g.first, g.last + 1))
        return str(msg.site)

    def _ack(self, db: sqlite3.Connection, site: str) -> None:
        if not self.ack_enabled:
            return
        acked = self._contig.get(site, 0)
        gaps = self._gaps.get(site, set())
        have = {
            s
            for (s,) in db.execute("SELECT seq FROM rows WHERE site = ? AND seq > ?", (site, acked))
        }
        while acked + 1 in have or acked + 1 in gaps:
            acked += 1
        self._contig[site] = acked
        ack = Ack(site=site, session=1, acked=acked)
        self._client.publish(self.topics.ack(site), encode(ack), qos=1)

    def gap_seqs(self, site: str) -> set[int]:
        return set(self._gaps.get(site, set()))

    def acked(self, site: str) -> int:
        return self._contig.get(site, 0)

    def stored(self, site: str) -> list[Stored]:
        """Everything stored for ``site``, in seq order (own read connection)."""
        if not self.db_path.exists():
            return []
        db = sqlite3.connect(str(self.db_path))
        try:
            rows = db.execute(
                "SELECT site, seq, kind, historical, payload FROM rows WHERE site = ? ORDER BY seq",
                (site,),
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()
        return [Stored(s, q, k, bool(h), json.loads(p)) for s, q, k, h, p in rows]
