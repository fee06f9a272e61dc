"""Named, run-once schema migrations (sqlite-utils) of the coordinator database.

Other modules add their own tables with their own migrations, e.g. training::

    MIGRATIONS = [Migration("train_0001_runs", create_runs)]
    SqliteStore(path, extra_migrations=MIGRATIONS)

Names are global: prefix them with the owning module (``core_``, ``train_``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

__all__ = ["HEARTBEAT_COLUMNS", "MIGRATIONS", "Migration", "apply_migrations"]

HEARTBEAT_COLUMNS = (
    ("site", str),
    ("received_at", int),
    ("ts", int),
    ("session", int),
    ("interval_s", float),
    ("uptime_s", float),
    ("cpu_percent", float),
    ("mem_percent", float),
    ("disk_percent", float),
    ("outbox_depth", int),
    ("outbox_bytes", int),
    ("outbox_dropped", int),
    ("last_acked", int),
    ("jobs_running", int),
)


class Migration(NamedTuple):
    """A named, run-once schema change; ``apply`` gets a ``sqlite_utils.Database``."""

    name: str
    apply: Callable[[Any], None]


def _m0001_core(db: Any) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["sites"].create(
        {
            "site": str,
            "registration": str,
            "status": str,
            "session": int,
            "state": str,
            "state_reason": str,
            "state_since": int,
            "first_seen": int,
            "last_seen": int,
            "last_alive": int,
            "interval_s": float,
            "acked": int,
            "outbox_depth": int,
            "outbox_dropped": int,
            "last_acked_reported": int,
            "cpu_percent": float,
            "mem_percent": float,
            "disk_percent": float,
            "jobs_running": int,
        },
        pk="site",
    )
    db["site_events"].create(
        {
            "id": int,
            "site": str,
            "at": int,
            "event": str,
            "state_from": str,
            "state_to": str,
            "reason": str,
            "session": int,
        },
        pk="id",
    )
    db["site_events"].create_index(["site", "at"])
    db["site_events"].create_index(["at"])
    db["heartbeats"].create(dict(HEARTBEAT_COLUMNS))
    db["heartbeats"].create_index(["site", "received_at"])
    db["heartbeats"].create_index(["received_at"])
    # One row per durable message: the unique (site, seq) makes a replay a no-op.
    db["messages"].create(
        {
            "site": str,
            "seq": int,
            "kind": str,
            "session": int,
            "ts": int,
            "received_at": int,
            "historical": int,
            "device": str,
            "job_id": str,
            "payload": str,
        },
        pk=("site", "seq"),
    )
    db["telemetry"].create(
        {
            "site": str,
            "device": str,
            "name": str,
            "ts": int,
            "value": float,
            "unit": str,
            "quality": str,
            "historical": int,
            "seq": int,
        }
    )
    db["telemetry"].create_index(["site", "ts"])
    db["dead_letters"].create(
        {
            "id": int,
            "topic": str,
            "payload": str,
            "size": int,
            "reason": str,
            "detail": str,
            "received_at": int,
        },
        pk="id",
    )
    db["gaps"].create(
        {"site": str, "first": int, "last": int, "received_at": int}, pk=("site", "first")
    )


def _rebuild(db: Any, table: str, create: str, columns: str) -> None:
    """Recreate ``table`` with a new definition (SQLite cannot change a primary key),
    keeping its rows, their rowids and every index other modules added to it."""
    indexes = [
        row[0]
        for row in db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL",
            [table],
        ).fetchall()
    ]
    db.execute(create.format(name=f"{table}_new"))
    db.execute(f"INSERT INTO {table}_new (rowid, {columns}) SELECT rowid, {columns} FROM {table}")
    db.execute(f"DROP TABLE {table}")
    db.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
    for sql in indexes:
        db.execute(sql)


def _m0002_streams(db: Any) -> None:
    """Stream identity: the durable key becomes (site, epoch, seq).

    A site's ``epoch`` is created with its state directory; rows stored before it existed
    belong to the epoch "". Also: per-stream ack state, the devices each site streams,
    and what a site's heartbeat says about its outbox's health.
    """
    _rebuild(
        db,
        "messages",
        "CREATE TABLE {name} (site TEXT NOT NULL, epoch TEXT NOT NULL DEFAULT '', "
        "seq INTEGER NOT NULL, kind TEXT, session INTEGER, ts INTEGER, received_at INTEGER, "
        "historical INTEGER, device TEXT, job_id TEXT, payload TEXT, "
        "PRIMARY KEY (site, epoch, seq))",
        "site, seq, kind, session, ts, received_at, historical, device, job_id, payload",
    )
    _rebuild(
        db,
        "gaps",
        "CREATE TABLE {name} (site TEXT NOT NULL, epoch TEXT NOT NULL DEFAULT '', "
        "first INTEGER NOT NULL, last INTEGER NOT NULL, received_at INTEGER, "
        "PRIMARY KEY (site, epoch, first))",
        "site, first, last, received_at",
    )
    db.execute("ALTER TABLE telemetry ADD COLUMN epoch TEXT NOT NULL DEFAULT ''")
    db.execute(
        "CREATE TABLE streams (site TEXT NOT NULL, epoch TEXT NOT NULL, first_seen INTEGER, "
        "last_seen INTEGER, acked INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (site, epoch))"
    )
    db.execute(
        "INSERT INTO streams SELECT site, '', first_seen, last_seen, coalesce(acked, 0) FROM sites"
    )
    db.execute(
        "CREATE TABLE devices (site TEXT NOT NULL, device TEXT NOT NULL, first_seen INTEGER, "
        "PRIMARY KEY (site, device))"
    )
    db.execute(
        "INSERT INTO devices SELECT site, device, min(received_at) FROM messages "
        "WHERE device IS NOT NULL GROUP BY site, device"
    )
    for column, kind in (
        ("epoch", "TEXT NOT NULL DEFAULT ''"),
        ("conflict_at", "INTEGER NOT NULL DEFAULT 0"),
        ("conflict_reason", "TEXT"),
        ("outbox_error", "TEXT"),
        ("samples_dropped", "INTEGER NOT NULL DEFAULT 0"),
    ):
        db.execute(f"ALTER TABLE sites ADD COLUMN {column} {kind}")
    for column, kind in (
        ("epoch", "TEXT NOT NULL DEFAULT ''"),
        ("samples_dropped", "INTEGER NOT NULL DEFAULT 0"),
        ("outbox_error", "TEXT"),
    ):
        db.execute(f"ALTER TABLE heartbeats ADD COLUMN {column} {kind}")


MIGRATIONS: tuple[Migration, ...] = (
    Migration("core_0001", _m0001_core),
    Migration("core_0002_streams", _m0002_streams),
)


def apply_migrations(conn: sqlite3.Connection, migrations: Iterable[Migration]) -> list[str]:
    """Run each migration not yet recorded in ``_migrations``; return the names applied."""
    migrations = list(migrations)
    try:
        done = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
    except sqlite3.OperationalError:  # a new database
        done = set()
    if all(m.name in done for m in migrations):
        return []  # the usual case after the first start: no sqlite-utils import needed
    # Only now: importing sqlite-utils takes ~0.9 s and ~100 MB here (it imports pandas
    # when installed, and syft installs it), which a restart and the writer process skip.
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    applied = []
    for migration in migrations:
        if migration.name in done:
            continue
        with conn:
            migration.apply(db)
            conn.execute("INSERT INTO _migrations VALUES (?, datetime('now'))", (migration.name,))
        applied.append(migration.name)
    return applied
