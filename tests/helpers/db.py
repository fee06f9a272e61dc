"""Read a coordinator database from a test while ``fedmq serve`` writes it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["query"]


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a read-only connection; [] while the database or table does not
    exist yet (serve creates and migrates it after it starts)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
