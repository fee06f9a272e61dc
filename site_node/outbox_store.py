"""The outbox's SQLite file: schema, connection, stream epoch, offline stats, payload flags.

The stream ``epoch`` lives in the same file as ``seq``: a new (or wiped) outbox starts a
new stream, so a re-imaged site never reuses an old stream's seqs. ``read_stats`` opens
its own connection, so ``fedmq-site status`` works with the daemon down; WAL lets it read
while the daemon's outbox thread writes.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from schemas import now_ms

__all__ = [
    "OutboxStats",
    "connect",
    "load_meta",
    "open_epoch",
    "probe_write",
    "read_stats",
    "with_flags",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gaps (first INTEGER PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stream (epoch TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS probe (data BLOB);
"""


@dataclass(frozen=True)
class OutboxStats:
    """A snapshot; ``oldest_ms`` is the creation time of the oldest unacked row.

    ``samples_dropped`` counts samples lost before they got a seq (storage failing, the
    queue to the outbox thread full) since start; ``error`` says why the outbox cannot
    store right now (None when healthy).
    """

    depth: int = 0
    bytes: int = 0
    dropped: int = 0
    last_acked: int = 0
    last_seq: int = 0
    oldest_ms: int | None = None
    epoch: str = ""
    samples_dropped: int = 0
    error: str | None = None

    def oldest_age_s(self, now: int | None = None) -> float | None:
        if self.oldest_ms is None:
            return None
        return max(0.0, ((now_ms() if now is None else now) - self.oldest_ms) / 1000.0)


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=True)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(_SCHEMA)
    return db


def load_meta(db: sqlite3.Connection) -> dict[str, int]:
    return {k: int(v) for k, v in db.execute("SELECT key, value FROM meta")}


def open_epoch(db: sqlite3.Connection) -> str:
    """The stream epoch of this outbox, created on first use.

    A new database gets a random epoch. A database from before epochs existed (rows or
    seqs already allocated, no epoch stored) keeps the empty epoch, so its stream goes on.
    """
    epoch = _stored_epoch(db)
    if epoch is not None:
        return epoch
    db.execute("BEGIN IMMEDIATE")
    try:
        epoch = _stored_epoch(db)
        if epoch is None:
            used = load_meta(db).get("next_seq", 1) > 1
            used = used or db.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is not None
            epoch = "" if used else secrets.token_hex(8)
            db.execute("INSERT INTO stream VALUES (?)", (epoch,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return epoch


def _stored_epoch(db: sqlite3.Connection) -> str | None:
    row = db.execute("SELECT epoch FROM stream LIMIT 1").fetchone()
    return None if row is None else str(row[0])


def probe_write(db: sqlite3.Connection, size: int = 64 * 1024) -> None:
    """Write (and delete) ``size`` bytes inside the caller's transaction: is there room?"""
    db.execute("INSERT INTO probe VALUES (zeroblob(?))", (size,))
    db.execute("DELETE FROM probe")


def read_stats(path: Path) -> OutboxStats:
    """Stats read straight from the database file (works with the daemon down)."""
    if not Path(path).exists():
        return OutboxStats()
    db = connect(Path(path))
    try:
        meta = load_meta(db)
        depth, size = db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox"
        ).fetchone()
        first = db.execute("SELECT created_ms FROM outbox ORDER BY seq LIMIT 1").fetchone()
        oldest = None if first is None else first[0]
        return OutboxStats(
            depth,
            size,
            meta.get("dropped", 0),
            meta.get("last_acked", 0),
            meta.get("next_seq", 1) - 1,
            oldest,
            _stored_epoch(db) or "",
        )
    finally:
        db.close()


def with_flags(payload: bytes, historical: bool, gaps: list[list[int]]) -> bytes:
    """The stored payload with ``historical`` set and the outstanding ``gaps`` announced."""
    if not historical and not gaps:
        return payload
    body = json.loads(payload)
    body["historical"] = historical or body.get("historical", False)
    if gaps:
        body["gaps"] = [{"first": a, "last": b} for a, b in gaps]
    return json.dumps(body, separators=(",", ":")).encode()
