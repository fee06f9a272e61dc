"""What a ``--db`` value names: a PostgreSQL URL, or else a SQLite file (stdlib only)."""

from __future__ import annotations

__all__ = ["is_postgres_url"]


def is_postgres_url(db: object) -> bool:
    """Whether ``db`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))
