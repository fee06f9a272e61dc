"""What only the SQLite store promises: its durability settings, its schema's column
order for positional inserts, and that a migrated database opens without sqlite-utils.

The behaviour every store shares is in ``test_store_contract.py``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from coordinator.store import HeartbeatRow, SqliteStore
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


def test_a_migrated_database_opens_without_importing_sqlite_utils(tmp_path: Path) -> None:
    # sqlite-utils imports pandas (~0.9 s, ~100 MB here): a restart and the writer process
    # open an up-to-date database without it; a new migration still gets it.
    db = tmp_path / "c.db"
    probe = (
        "import sys; from coordinator.store import SqliteStore; "
        f"SqliteStore({str(db)!r}).close(); print('sqlite_utils' in sys.modules)"
    )

    def opened() -> str:
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             cwd=REPO, check=True)  # fmt: skip
        return run.stdout.strip()

    assert opened() == "True"  # a new database: the migrations ran
    assert opened() == "False"
    names = [r[0] for r in sqlite3.connect(db).execute("SELECT name FROM _migrations")]
    assert names == ["core_0001", "core_0002_streams"]


def test_integrity_ok_reads_sqlites_own_check(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    assert store.integrity_ok() is True
    store.close()
