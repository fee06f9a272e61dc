"""Open the coordinator's store from what ``--db`` says: a ``postgresql://`` URL opens
:class:`~coordinator.store.postgres.PostgresStore` (the ``postgres`` extra), anything
else is a SQLite file (:class:`~coordinator.store.SqliteStore`, the embedded default).

psycopg is imported only for a PostgreSQL URL: a SQLite coordinator never loads it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import coordinator.store
from coordinator.store import Migration
from coordinator.store.urls import is_postgres_url

__all__ = ["POSTGRES_HINT", "is_postgres_url", "open_store", "unavailable_errors"]

POSTGRES_HINT = "PostgreSQL needs the postgres extra: pip install 'fedmq[postgres]' (psycopg 3)"


def open_store(db: Path | str, extra_migrations: Iterable[Migration] = ()) -> Any:
    """A :class:`~coordinator.store.Store` on ``db``, every migration applied."""
    if is_postgres_url(db):
        try:
            from coordinator.store.postgres import PostgresStore
        except ImportError as exc:
            raise RuntimeError(f"{POSTGRES_HINT} ({exc})") from None
        return PostgresStore(str(db), extra_migrations)
    # Looked up at call time, so a test (or an embedder) may swap the class.
    return coordinator.store.SqliteStore(db, extra_migrations)


def unavailable_errors(db: Path | str) -> tuple[type[BaseException], ...]:
    """The exceptions that mean the storage itself is unavailable (locked, gone, the
    server down), not that a message is at fault: retry, never dead-letter."""
    if is_postgres_url(db):
        import psycopg

        return (sqlite3.OperationalError, psycopg.OperationalError)
    return (sqlite3.OperationalError,)
