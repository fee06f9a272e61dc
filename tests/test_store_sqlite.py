"""What only the SQLite store promises: its durability settings, its schema's column
order for positional inserts, plain-DDL migrations (atomic, no sqlite-utils import).

The behaviour every store shares is in ``test_store_contract.py``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.store import HeartbeatRow, Migration, SqliteStore
from tests.helpers.coord_proc import REPO


def test_durability_pragmas(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_heartbeat_columns_match_the_row_fields(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    columns = [c[1] for c in store.conn.execute("PRAGMA table_info(heartbeats)")]
    assert columns == list(HeartbeatRow._fields)  # rows are inserted positionally
    store.close()


def test_sqlite_utils_is_imported_only_for_a_migration_that_asks_for_it(tmp_path: Path) -> None:
    # sqlite-utils imports pandas (~0.9 s, ~100 MB here): the core migrations are plain DDL
    # and SQL, so a new database, a restart and the writer process never import it.
    def opened(db: Path, extra: str = "") -> str:
        probe = (
            "import sys; from coordinator.store import Migration, SqliteStore; "
            "m = [Migration('x_0001', lambda db: db['x'].create({'a': int}))]; "
            f"SqliteStore({str(db)!r}{extra}).close(); print('sqlite_utils' in sys.modules)"
        )
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             cwd=REPO, check=True)  # fmt: skip
        return run.stdout.strip()

    db = tmp_path / "c.db"
    assert opened(db) == "False"  # a new database: the core migrations ran
    assert opened(db) == "False"
    assert opened(db, ", m") == "True"  # code that wants a sqlite_utils.Database gets one
    assert opened(db, ", m") == "False"  # once
    names = [r[0] for r in sqlite3.connect(db).execute("SELECT name FROM _migrations")]
    assert names == [
        "core_0001",
        "core_0002_streams",
        "core_0003_alarms",
        "deploy_0001_deployments",
        "x_0001",
    ]


def test_a_ddl_migration_that_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    bad = Migration("x_0001", "CREATE TABLE x (a INTEGER); CREATE TABLE meta (b TEXT)")
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        SqliteStore(tmp_path / "c.db", extra_migrations=[bad])
    conn = sqlite3.connect(tmp_path / "c.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "sites" in tables and "x" not in tables  # the core ran; x rolled back
    assert [r[0] for r in conn.execute("SELECT name FROM _migrations WHERE name='x_0001'")] == []
    good = Migration("x_0001", "CREATE TABLE x (a INTEGER); CREATE INDEX x_a ON x (a)")
    store = SqliteStore(tmp_path / "c.db", extra_migrations=[good])
    assert store.migrations() == [
        "core_0001",
        "core_0002_streams",
        "core_0003_alarms",
        "deploy_0001_deployments",
        "x_0001",
    ]
    store.close()


def test_integrity_ok_reads_sqlites_own_check(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    assert store.integrity_ok() is True
    store.close()


def test_a_database_from_before_streams_is_migrated_keeping_rows_and_indexes(
    tmp_path: Path,
) -> None:
    from coordinator.store.migrations import MIGRATIONS, apply_migrations

    db = tmp_path / "c.db"
    old = sqlite3.connect(db)
    apply_migrations(old, MIGRATIONS[:1])  # as a coordinator before epochs left it
    old.execute(
        "INSERT INTO messages (site, seq, kind, payload) VALUES ('a', 7, 'job_status', '{}')"
    )
    old.execute("INSERT INTO sites (site, first_seen, last_seen, acked) VALUES ('a', 1, 2, 7)")
    old.execute("CREATE INDEX other_module_idx ON messages (job_id)")
    old.commit()
    old.close()
    store = SqliteStore(db)
    [row] = store.messages()
    assert (row.site, row.epoch, row.seq, row.kind, row.payload) == ("a", "", 7, "job_status", "{}")
    assert [tuple(s) for s in store.load_streams()] == [("a", "", 1, 2, 7)]
    indexes = [
        r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
    ]
    assert "other_module_idx" in indexes
    store.close()
