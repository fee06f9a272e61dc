"""``fedmq dead-letters``: payloads the coordinator rejected, with the reason."""

from __future__ import annotations

from pathlib import Path

import click

from coordinator.cli.output import connect, db_option, echo_json, fmt_ts, table

__all__ = ["dead_letters"]


@click.command("dead-letters")
@db_option
@click.option("--reason", help="Only this reason (e.g. not_json, site_mismatch, too_large).")
@click.option("--limit", type=int, default=50, show_default=True, help="Newest N.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def dead_letters(db: Path, reason: str | None, limit: int, as_json: bool) -> None:
    """List rejected inbound messages: topic, reason, detail and a payload excerpt.

    \b
    Example:
        fedmq dead-letters --limit 20
        fedmq dead-letters --reason site_mismatch --json
    """
    reader = connect(db)
    rows = reader.dead_letters(reason, limit)
    reader.close()
    if as_json:
        echo_json(rows)
        return
    body = [
        (fmt_ts(r["received_at"]), r["topic"], r["reason"], r["detail"][:60], r["size"])
        for r in rows
    ]
    click.echo(table(body, ("RECEIVED", "TOPIC", "REASON", "DETAIL", "BYTES")))
