"""``fedmq-site history``: what the site's local telemetry history holds, and exports."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import click

from fedmq_runtime.cli import NotFound, UsageError
from site_node.cli.options import settings_from, site_options
from site_node.history import HISTORY_FILE, export_history
from site_node.history.export import iso_utc
from site_node.history.store import device_summary

__all__ = ["history"]


@click.group()
def history() -> None:
    """The site's local telemetry history (docs/history.md): every device's samples,
    whatever its publish mode, bounded by [history] max_age_days and max_bytes.

    \b
    Example:
        fedmq-site history show --config site.toml
        fedmq-site history export --config site.toml --device press-1 --since-days 7 --out p.csv
    """


def _db(data_dir: Path) -> Path:
    path = data_dir / HISTORY_FILE
    if not path.exists():
        raise NotFound(f"no history at {path} (the site has not run with [history] enabled)")
    return path


@history.command()
@site_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Per device: readings held, oldest and newest time, sensors; and the file's size.

    Reads the history file only: the daemon may be running.

    \b
    Example:
        fedmq-site history show --config site.toml --json
    """
    settings = settings_from(config, site_id, host, port, data_dir)
    path = _db(settings.data_dir)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        devices = device_summary(conn)
    finally:
        conn.close()
    publish = {d.name: d.publish for d in settings.devices}
    rows: list[dict[str, Any]] = [
        {
            "device": d.device,
            "publish": publish.get(d.device),
            "readings": d.readings,
            "first": None if d.first_ms is None else iso_utc(d.first_ms),
            "last": None if d.last_ms is None else iso_utc(d.last_ms),
            "sensors": list(d.sensors),
        }
        for d in devices
    ]
    size = path.stat().st_size
    if as_json:
        click.echo(json.dumps({"file": str(path), "bytes": size, "devices": rows}))
        return
    click.echo(f"{path}: {size} bytes (bound {settings.history.max_bytes}, "
               f"{settings.history.max_age_days:g} days)")  # fmt: skip
    click.echo(f"{'DEVICE':<20}{'PUBLISH':<9}{'READINGS':>10}  {'FIRST':<25}{'LAST':<25}SENSORS")
    for r in rows:
        click.echo(
            f"{r['device']:<20}{r['publish'] or '-':<9}{r['readings']:>10}  "
            f"{r['first'] or '-':<25}{r['last'] or '-':<25}{len(r['sensors'])}"
        )


@history.command()
@site_options
@click.option("--device", "devices", multiple=True, required=True, help="Device (repeatable).")
@click.option("--since-days", type=float, help="Only the last N days (default: all held).")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV file."
)
def export(
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    devices: tuple[str, ...],
    since_days: float | None,
    out: Path,
) -> None:
    """Write devices' history to a CSV, as a history dataset's task reads it: columns
    timestamp (ISO 8601 UTC), ts_ms, device, then one per sensor (docs/history.md).

    \b
    Example:
        fedmq-site history export --config site.toml --device press-1 --out press-1.csv
    """
    if since_days is not None and since_days <= 0:
        raise UsageError("--since-days must be > 0")
    settings = settings_from(config, site_id, host, port, data_dir)
    result = export_history(_db(settings.data_dir), list(devices), out, since_days)
    click.echo(f"{result.rows} readings, {len(result.columns) - 3} sensor column(s) -> {out}")
