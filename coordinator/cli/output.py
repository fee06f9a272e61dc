"""Shared pieces of the read commands: the ``--db`` option, one-line errors, tables."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from coordinator.store.read import DatabaseMissing, NotAFedmqDatabase, SqliteReader, StoreReader
from coordinator.store.urls import is_postgres_url
from fedmq_runtime.cli import NotFound

__all__ = [
    "ago", "connect", "db_option", "echo_json", "fmt_ts", "shown", "table", "training_db_option",
]  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])


def _sqlite_only(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    # click.Path has already folded "postgresql://" into "postgresql:/".
    if str(value).startswith(("postgresql:", "postgres:")):
        command = " ".join(["fedmq", *ctx.command_path.split()[1:]])  # also under python -c
        raise click.BadParameter(
            f"{command} reads SQLite; with PostgreSQL (fedmq serve --db "
            "postgresql://...) query the database with psql: see docs/postgres.md",
            ctx,
            param,
        )
    return value


def db_option(fn: F) -> F:
    return click.option(
        "--db",
        type=click.Path(path_type=Path),
        default="fedmq.db",
        envvar="FEDMQ_DB",
        show_default=True,
        callback=_sqlite_only,
        help="Coordinator database, a SQLite file (env FEDMQ_DB). The read commands "
        "read SQLite only: on PostgreSQL use psql (docs/postgres.md).",
    )(fn)


def training_db_option(fn: F) -> F:
    """``--db`` of the training read commands: a SQLite file or a PostgreSQL URL."""
    return click.option(
        "--db",
        metavar="FILE|URL",
        default="fedmq.db",
        envvar="FEDMQ_DB",
        show_default=True,
        help="Coordinator database: a SQLite file, or the postgresql:// URL serve stores "
        "into (env FEDMQ_DB).",
    )(fn)


def shown(db: Path | str) -> str:
    """``db`` for messages: a PostgreSQL URL without its password."""
    from coordinator.cli.serve import _shown

    return _shown(db)


def connect(path: Path | str) -> StoreReader:
    """Open the database read-only or fail with one line that says how to start."""
    if is_postgres_url(path):
        from coordinator.store.read import PostgresReader

        try:
            return PostgresReader.open(str(path))
        except DatabaseMissing as exc:
            raise NotFound(f"cannot read {shown(path)}: {exc}") from None
    path = Path(path)
    try:
        return SqliteReader.open(path)
    except DatabaseMissing:
        raise NotFound(
            f"no database at {path}: start the coordinator with `fedmq serve --db {path}`"
        ) from None
    except NotAFedmqDatabase as exc:
        raise click.ClickException(f"{path} is not a fedmq database ({exc})") from None


def ago(ms: int | None, now: int) -> str:
    """``12s``, ``3m``, ``5h``, ``2d`` ago; ``-`` when never."""
    if not ms:
        return "-"
    s = max(0, (now - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def fmt_ts(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain left-aligned text table."""
    cells = [[str(c) for c in header], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))
