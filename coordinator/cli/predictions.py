"""``fedmq predictions SITE``: the stored predictions of one site's deployed model."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from coordinator.cli.output import connect, db_option, echo_json, fmt_ts, table
from coordinator.cli.telemetry import parse_since
from fedmq_runtime.clock import now_ms

__all__ = ["predictions"]


def _outputs(outputs: dict[str, dict[str, object]]) -> str:
    return " ".join(
        f"{name}={o.get('value')}{' ' + str(o['unit']) if o.get('unit') else ''}"
        for name, o in outputs.items()
    )


@click.command()
@click.argument("site_id")
@db_option
@click.option("--device", help="Only this device.")
@click.option("--since", help="Windows that ended since: 10m, 2h, 1d, epoch ms or ISO time.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Newest N predictions.")  # fmt: skip
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout (one row per output).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def predictions(
    site_id: str,
    db: Path,
    device: str | None,
    since: str | None,
    limit: int,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Show the newest stored predictions of a site (oldest first).

    A site publishes one prediction per device and scoring window on
    P/site/SITE/prediction/DEVICE (durable: stored exactly once, acked like telemetry);
    each names the model version and task, the window's end and its outputs with units.

    \b
    Example:
        fedmq predictions plant-a --device engine-7 --since 1h
        fedmq predictions plant-a --since 2026-11-29T08:00 --json
        fedmq predictions plant-a --limit 10000 --csv > plant-a-predictions.csv
    """
    if as_csv and as_json:
        raise click.UsageError("use one of --csv and --json")
    reader = connect(db)
    start = parse_since(since, now_ms()) if since else None
    rows = reader.predictions(site_id, device, start, limit)
    reader.close()
    if as_json:
        echo_json(rows)
    elif as_csv:
        out = csv.writer(sys.stdout)
        out.writerow(["window_end", "device", "model_version", "task", "output", "value", "unit",
                      "seq", "epoch"])  # fmt: skip
        for r in rows:
            for name, o in r["outputs"].items():
                head = [fmt_ts(r["window_end"]), r["device"], r["model_version"], r["task"]]
                out.writerow([*head, name, o.get("value"), o.get("unit", ""), r["seq"], r["epoch"]])
    else:
        body = [
            (fmt_ts(r["window_end"]), r["device"], r["model_version"], r["task"],
             _outputs(r["outputs"]))
            for r in rows
        ]  # fmt: skip
        click.echo(table(body, ("WINDOW END", "DEVICE", "MODEL", "TASK", "OUTPUTS")))
        if not rows:
            which = f" device {json.dumps(device)}" if device else ""
            click.echo(f"(no predictions of {site_id}{which})", err=True)
