"""A PostgreSQL connection that the ``sqlite3``-style code of this package can use as is.

The training tables' driver (:class:`coordinator.store.training.TrainDb`) and the read
functions it uses (``coordinator.store.read.sites``, ``registrations``; the
``training_read`` queries) are written against ``sqlite3``: ``?`` placeholders, rows
indexed by position or by name, ``with conn:`` for a transaction. Their SQL is portable
(``ON CONFLICT ... DO UPDATE``, no ``rowid``, no ``PRAGMA`` on the PostgreSQL path), so
instead of a second copy of each query, :class:`CompatConnection` gives psycopg that
interface:

* ``execute(sql, params)``: ``?`` becomes ``%s`` (and a literal ``%`` is doubled);
* rows are :class:`Row`: ``row[0]``, ``row["col"]``, ``row.keys()``, ``dict(row)``, and
  unpacking, as ``sqlite3.Row``;
* outside a ``with conn:`` block every statement commits by itself (autocommit), so a
  driver that only reads never leaves a transaction open ("idle in transaction" holds
  locks that retention's ``DROP TABLE`` of a partition would wait for); ``with conn:``
  is one transaction, committed at its end or rolled back on an exception, as sqlite3's.

psycopg is imported here: import this module only for a PostgreSQL URL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import psycopg

__all__ = ["CompatConnection", "Row", "connect", "to_pg"]


class Row:
    """One result row, read like ``sqlite3.Row``: by position, by column name, ``keys()``."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index, self._values = index, values

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))!r})"


def _row_factory(cursor: Any) -> Any:
    names = [c.name for c in cursor.description or ()]
    index = {name: i for i, name in enumerate(names)}
    return lambda values: Row(index, values)


def to_pg(sql: str) -> str:
    """``sqlite3``'s qmark placeholders as psycopg's (``%`` escaped first)."""
    return sql.replace("%", "%%").replace("?", "%s")


class CompatConnection:
    """A psycopg connection with the ``sqlite3.Connection`` surface this package uses."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn  # for apply_pg_migrations and anything PostgreSQL-specific
        self._tx: list[Any] = []  # open ``with conn:`` blocks (psycopg transactions)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        cur = self.raw.cursor(row_factory=_row_factory)
        if params is None:
            return cur.execute(sql.encode())
        return cur.execute(to_pg(sql).encode(), [_param(p) for p in params])

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cur = self.raw.cursor(row_factory=_row_factory)
        cur.executemany(to_pg(sql).encode(), [[_param(p) for p in r] for r in rows])
        return cur

    @property
    def in_transaction(self) -> bool:
        return bool(self._tx)

    def __enter__(self) -> CompatConnection:
        tx = self.raw.transaction()  # nested: a savepoint
        tx.__enter__()
        self._tx.append(tx)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._tx.pop().__exit__(kind, exc, tb)

    def commit(self) -> None:
        """Nothing to do: outside ``with conn:`` each statement committed already."""

    def rollback(self) -> None:
        """Nothing to do: a failed ``with conn:`` block rolled itself back."""

    def close(self) -> None:
        self.raw.close()


def _param(value: Any) -> Any:
    # SQLite stores a bool as 0/1 in an INTEGER column; PostgreSQL refuses a boolean
    # parameter for a BIGINT column.
    return int(value) if isinstance(value, bool) else value


def connect(url: str) -> CompatConnection:
    """An autocommit connection to ``url`` (libpq's URL; the password from ~/.pgpass)."""
    return CompatConnection(psycopg.connect(url, autocommit=True))
