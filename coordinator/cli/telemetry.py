"""``fedmq telemetry ID``: stored samples of one site."""

from __future__ import annotations

import csv
import datetime as dt
import re
import sys
from pathlib import Path

import click

from coordinator.cli.output import connect, db_option, echo_json, fmt_ts, table
from fedmq_runtime.clock import now_ms

__all__ = ["parse_since", "telemetry"]

_REL = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_since(text: str, now: int) -> int:
    """``10m``/``2h``/``1d`` ago, epoch ms, or an ISO 8601 time (UTC if no zone)."""
    m = _REL.match(text)
    if m:
        return now - int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter("use 10m, 2h, 1d, epoch ms or an ISO time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


@click.command()
@click.argument("site_id")
@db_option
@click.option("--device", help="Only this device.")
@click.option("--sensor", help="Only this sensor name.")
@click.option("--since", help="Samples taken since: 10m, 2h, 1d, epoch ms or ISO time.")
@click.option("--limit", type=int, default=100, show_default=True, help="Newest N samples.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def telemetry(
    site_id: str,
    db: Path,
    device: str | None,
    sensor: str | None,
    since: str | None,
    limit: int,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Show the newest stored telemetry samples of a site (oldest first).

    \b
    Example:
        fedmq telemetry plant-a --device press1 --sensor temp --since 1h
        fedmq telemetry plant-a --limit 100000 --csv > plant-a.csv
    """
    reader = connect(db)
    start = parse_since(since, now_ms()) if since else None
    rows = reader.telemetry(site_id, device, sensor, start, limit)
    reader.close()
    if as_json:
        echo_json(rows)
    elif as_csv:
        out = csv.writer(sys.stdout)
        out.writerow(["ts", "device", "name", "value", "unit", "quality", "historical", "seq"])
        for r in rows:
            out.writerow([fmt_ts(r["ts"]), *list(r.values())[1:]])
    else:
        body = [
            (fmt_ts(r["ts"]), r["device"], r["name"], r["value"], r["unit"], r["quality"])
            for r in rows
        ]
        click.echo(table(body, ("TS", "DEVICE", "SENSOR", "VALUE", "UNIT", "Q")))
