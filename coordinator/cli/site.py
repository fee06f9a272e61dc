"""``fedmq site ID``: one site's registration, events and latest heartbeat."""

from __future__ import annotations

import json
from pathlib import Path

import click

from coordinator.cli.output import ago, connect, db_option, echo_json, fmt_ts, table
from fedmq_runtime.cli import NotFound
from fedmq_runtime.clock import now_ms

__all__ = ["site"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


@click.command()
@click.argument("site_id")
@db_option
@click.option("--events", "n_events", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def site(site_id: str, db: Path, n_events: int, as_json: bool) -> None:
    """Show one site: state, registration, latest heartbeat metrics and recent events.

    \b
    Example:
        fedmq site plant-a-line-3
        fedmq site plant-a-line-3 --events 50 --json
    """
    reader = connect(db)
    detail = reader.site_detail(site_id, n_events)
    reader.close()
    if detail is None:
        raise NotFound(f"no site {site_id!r} in {db}: see `fedmq sites --db {db}`")
    if as_json:
        echo_json(detail)
        return
    now = now_ms()
    click.echo(f"site      {detail['site']}  ({detail['name'] or 'unnamed'})")
    click.echo(f"state     {detail['state']}: {detail['reason']}")
    click.echo(f"last seen {ago(detail['last_seen'], now)} ago, session {detail['session']}")
    click.echo(
        f"messages  {detail['messages']} stored, acked up to seq {detail['acked']} "
        f"of stream {detail['epoch'] or '-'}"
    )
    if len(detail["streams"]) > 1:
        click.echo("streams   (a new one each time the site's state directory was lost)")
        for st in detail["streams"]:
            click.echo(
                f"  {st['epoch'] or '-':<18} first seen {fmt_ts(st['first_seen'])}, "
                f"last {fmt_ts(st['last_seen'])}: {st['messages']} messages, acked {st['acked']}"
            )
    if detail["outbox_error"]:
        click.echo(
            f"outbox    ERROR {detail['outbox_error']} ({detail['samples_dropped']} samples "
            "dropped so far)"
        )
    hb = detail["heartbeat"]
    if hb:
        click.echo(
            f"heartbeat {fmt_ts(hb['received_at'])}: cpu {_pct(hb['cpu_percent'])} mem "
            f"{_pct(hb['mem_percent'])} disk {_pct(hb['disk_percent'])} "
            f"outbox {hb['outbox_depth']} "
            f"(dropped {hb['outbox_dropped']}) jobs {hb['jobs_running']}"
        )
    click.echo("registration:")
    click.echo(json.dumps(detail["registration"], indent=2) if detail["registration"] else "  -")
    click.echo("events:")
    rows = [
        (fmt_ts(e["at"]), e["event"], e["state_from"] or "", e["state_to"] or "", e["reason"])
        for e in detail["events"]
    ]
    click.echo(table(rows, ("AT", "EVENT", "FROM", "TO", "REASON")))
