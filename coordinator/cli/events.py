"""``fedmq events``: site state transitions, gaps and other recorded events."""

from __future__ import annotations

from pathlib import Path

import click

from coordinator.cli.output import connect, db_option, echo_json, fmt_ts, table

__all__ = ["events"]


@click.command()
@db_option
@click.option("--site", help="Only this site.")
@click.option("--limit", type=int, default=50, show_default=True, help="Newest N events.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def events(db: Path, site: str | None, limit: int, as_json: bool) -> None:
    """List the newest site events (online/stale/offline transitions with reasons, gaps).

    \b
    Example:
        fedmq events --site plant-a --limit 20
        fedmq events --json
    """
    reader = connect(db)
    rows = reader.events(site, limit)
    reader.close()
    if as_json:
        echo_json(rows)
        return
    body = [
        (fmt_ts(e["at"]), e["site"], e["event"], e["state_from"] or "", e["state_to"] or "",
         e["reason"])
        for e in rows
    ]  # fmt: skip
    click.echo(table(body, ("AT", "SITE", "EVENT", "FROM", "TO", "REASON")))
