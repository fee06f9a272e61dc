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


MIGRATIONS: tuple[Migration, ...] = (Migration("core_0001", _m0001_core),)


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
