"""The outbox's SQLite file: schema, connection, offline stats and payload flags.

``read_stats`` opens its own connection, so ``fedmq-site status`` works with the daemon
down; WAL lets it read while the daemon's outbox thread writes.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from schemas import now_ms

__all__ = ["OutboxStats", "connect", "load_meta", "read_stats", "with_flags"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gaps (first INTEGER PRIMARY KEY, last INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxStats:
    """A snapshot; ``oldest_ms`` is the creation time of the oldest unacked row."""

    depth: int = 0
    bytes: int = 0
    dropped: int = 0
    last_acked: int = 0
    last_seq: int = 0
    oldest_ms: int | None = None

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
