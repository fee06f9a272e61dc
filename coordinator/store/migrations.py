"""Named, run-once schema migrations of the coordinator database: plain DDL, or code
where a change needs it (rebuilding a table keeps its rows and indexes).

Other modules add their own tables with their own migrations, e.g. training::

    MIGRATIONS = [Migration("train_0001_runs", create_runs)]
    SqliteStore(path, extra_migrations=MIGRATIONS)

Names are global: prefix them with the owning module (``core_``, ``train_``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

__all__ = ["MIGRATIONS", "Migration", "apply_migrations"]


class Migration(NamedTuple):
    """A named, run-once schema change.

    ``apply`` is either plain DDL (statements separated by ``;``, run in one transaction
    with the record that it ran), or code: a callable given a ``sqlite_utils.Database``,
    or the ``sqlite3.Connection`` itself when ``sqlite_utils`` is False. sqlite-utils is
    imported only for a pending migration that asks for it (it imports pandas when
    installed: ~0.9 s and ~100 MB here).
    """

    name: str
    apply: str | Callable[[Any], None]
    sqlite_utils: bool = True


# The first schema, as sqlite-utils created it before migrations were plain DDL (the same
# text, so databases created either way are identical).
_CORE_0001 = """
CREATE TABLE "meta" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT
);
CREATE TABLE "sites" (
   "site" TEXT PRIMARY KEY,
   "registration" TEXT,
   "status" TEXT,
   "session" INTEGER,
   "state" TEXT,
   "state_reason" TEXT,
   "state_since" INTEGER,
   "first_seen" INTEGER,
   "last_seen" INTEGER,
   "last_alive" INTEGER,
   "interval_s" REAL,
   "acked" INTEGER,
   "outbox_depth" INTEGER,
   "outbox_dropped" INTEGER,
   "last_acked_reported" INTEGER,
   "cpu_percent" REAL,
   "mem_percent" REAL,
   "disk_percent" REAL,
   "jobs_running" INTEGER
);
CREATE TABLE "site_events" (
   "id" INTEGER PRIMARY KEY,
   "site" TEXT,
   "at" INTEGER,
   "event" TEXT,
   "state_from" TEXT,
   "state_to" TEXT,
   "reason" TEXT,
   "session" INTEGER
);
CREATE INDEX "idx_site_events_site_at"
    ON "site_events" ("site", "at");
CREATE INDEX "idx_site_events_at"
    ON "site_events" ("at");
CREATE TABLE "heartbeats" (
   "site" TEXT,
   "received_at" INTEGER,
   "ts" INTEGER,
   "session" INTEGER,
   "interval_s" REAL,
   "uptime_s" REAL,
   "cpu_percent" REAL,
   "mem_percent" REAL,
   "disk_percent" REAL,
   "outbox_depth" INTEGER,
   "outbox_bytes" INTEGER,
   "outbox_dropped" INTEGER,
   "last_acked" INTEGER,
   "jobs_running" INTEGER
);
CREATE INDEX "idx_heartbeats_site_received_at"
    ON "heartbeats" ("site", "received_at");
CREATE INDEX "idx_heartbeats_received_at"
    ON "heartbeats" ("received_at");
CREATE TABLE "messages" (
   "site" TEXT,
   "seq" INTEGER,
   "kind" TEXT,
   "session" INTEGER,
   "ts" INTEGER,
   "received_at" INTEGER,
   "historical" INTEGER,
   "device" TEXT,
   "job_id" TEXT,
   "payload" TEXT,
   PRIMARY KEY ("site", "seq")
);
CREATE TABLE "telemetry" (
   "site" TEXT,
   "device" TEXT,
   "name" TEXT,
   "ts" INTEGER,
   "value" REAL,
   "unit" TEXT,
   "quality" TEXT,
   "historical" INTEGER,
   "seq" INTEGER
);
CREATE INDEX "idx_telemetry_site_ts"
    ON "telemetry" ("site", "ts");
CREATE TABLE "dead_letters" (
   "id" INTEGER PRIMARY KEY,
   "topic" TEXT,
   "payload" TEXT,
   "size" INTEGER,
   "reason" TEXT,
   "detail" TEXT,
   "received_at" INTEGER
);
CREATE TABLE "gaps" (
   "site" TEXT,
   "first" INTEGER,
   "last" INTEGER,
   "received_at" INTEGER,
   PRIMARY KEY ("site", "first")
)
"""


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


# The current state of each alarm rule per site and device (schemas.Alarm), and who
# acknowledged it when (``fedmq alarms ack``); every transition is also a site event.
# Predictions are durable messages: rows of ``messages`` with kind 'prediction'.
_CORE_0003_ALARMS = """
CREATE TABLE alarms (
   id INTEGER PRIMARY KEY,
   site TEXT NOT NULL,
   device TEXT NOT NULL,
   alarm_id TEXT NOT NULL,
   state TEXT NOT NULL,
   severity TEXT,
   rule TEXT,
   value REAL,
   model_version TEXT,
   since INTEGER,
   ts INTEGER,
   updated_at INTEGER,
   acked_by TEXT,
   acked_at INTEGER,
   UNIQUE (site, device, alarm_id)
)
"""

# Model deployments (``fedmq deploy``; coordinator/store/deployments.py): one row per
# requested deployment, and per site and deployment its latest reported state. ``seq``
# NULL: written by the coordinator (sent), not yet reported by the site; ``activated_at``:
# when the site reported it active (the history ``--rollback`` reads).
_DEPLOY_0001 = """
CREATE TABLE IF NOT EXISTS deployments (
   deployment_id TEXT PRIMARY KEY,
   created_at INTEGER NOT NULL,
   model_version TEXT NOT NULL,
   task TEXT NOT NULL,
   code_hash TEXT NOT NULL,
   cadence_s REAL,
   rules TEXT NOT NULL DEFAULT '[]',
   devices TEXT NOT NULL DEFAULT '[]',
   rollback INTEGER NOT NULL DEFAULT 0,
   requested_by TEXT NOT NULL DEFAULT '',
   expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS site_deployments (
   site TEXT NOT NULL,
   deployment_id TEXT NOT NULL,
   model_version TEXT NOT NULL,
   task TEXT NOT NULL DEFAULT '',
   state TEXT NOT NULL,
   reason TEXT NOT NULL DEFAULT '',
   since INTEGER NOT NULL,
   previous_version TEXT NOT NULL DEFAULT '',
   updated_at INTEGER NOT NULL,
   activated_at INTEGER,
   epoch TEXT NOT NULL DEFAULT '',
   seq INTEGER,
   PRIMARY KEY (site, deployment_id)
);
CREATE INDEX IF NOT EXISTS site_deployments_active
    ON site_deployments (site, activated_at)
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration("core_0001", _CORE_0001),
    Migration("core_0002_streams", _m0002_streams, sqlite_utils=False),
    Migration("core_0003_alarms", _CORE_0003_ALARMS),
    Migration("deploy_0001_deployments", _DEPLOY_0001),
)


def apply_migrations(conn: sqlite3.Connection, migrations: Iterable[Migration]) -> list[str]:
    """Run each migration not yet recorded in ``_migrations``; return the names applied."""
    migrations = list(migrations)
    try:
        done = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
    except sqlite3.OperationalError:  # a new database
        done = set()
    pending = [m for m in migrations if m.name not in done]
    if not pending:
        return []  # the usual case after the first start
    db: Any = conn
    if any(callable(m.apply) and m.sqlite_utils for m in pending):
        # Only now: sqlite-utils imports pandas when installed (syft installs it).
        import sqlite_utils

        db = sqlite_utils.Database(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    conn.commit()
    for migration in pending:
        with conn:
            if isinstance(migration.apply, str):
                conn.execute("BEGIN")  # DDL does not open a transaction by itself
                for statement in migration.apply.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            elif migration.sqlite_utils:
                migration.apply(db)
            else:
                migration.apply(conn)
            conn.execute("INSERT INTO _migrations VALUES (?, datetime('now'))", (migration.name,))
    return [m.name for m in pending]
