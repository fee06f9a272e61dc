"""``fedmq-site status``: the site's state from its data dir (no broker needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fedmq_runtime.clock import now_ms
from site_node.cli.options import settings_from, site_options
from site_node.outbox import read_stats
from site_node.state import SiteState, pid_alive

__all__ = ["site_status", "status"]


def site_status(data_dir: Path) -> dict[str, Any]:
    """Status of the site whose data lives in ``data_dir`` (local files only)."""
    state = SiteState.read(data_dir / "state.json")
    stats = read_stats(data_dir / "outbox.db")
    running = pid_alive(state.pid)
    age = stats.oldest_age_s(now_ms())
    return {
        "running": running,
        "connected": running and state.connected,
        "pid": state.pid if running else None,
        "session": state.session,
        "epoch": stats.epoch,
        "outbox_depth": stats.depth,
        "outbox_bytes": stats.bytes,
        "outbox_dropped": stats.dropped,
        "oldest_unacked_age_s": None if age is None else round(age, 1),
        "last_acked": stats.last_acked,
        "last_seq": stats.last_seq,
    }


@click.command()
@site_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Show whether the site is connected, its session and outbox, from local state.

    Works with the broker and the site daemon down.

    \b
    Example:
        fedmq-site status --config site.toml
        fedmq-site status --data-dir /var/lib/fedmq-site --site-id press-1 --json
    """
    settings = settings_from(config, site_id, host, port, data_dir)
    info = site_status(settings.data_dir)
    if as_json:
        click.echo(json.dumps({"site": settings.site_id, **info}))
        return
    age = info["oldest_unacked_age_s"]
    lines = [
        ("site", settings.site_id),
        ("daemon", f"running (pid {info['pid']})" if info["running"] else "not running"),
        ("broker", "connected" if info["connected"] else "not connected"),
        ("session", info["session"]),
        ("stream epoch", info["epoch"] or "-"),
        ("outbox depth", f"{info['outbox_depth']} rows, {info['outbox_bytes']} bytes"),
        ("oldest unacked", "-" if age is None else f"{age:.1f} s"),
        ("dropped", info["outbox_dropped"]),
        ("last acked seq", f"{info['last_acked']} (last seq {info['last_seq']})"),
    ]
    for key, value in lines:
        click.echo(f"{key:<16}{value}")
