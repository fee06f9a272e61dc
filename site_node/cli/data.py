"""``fedmq-site data list``: the datasets this site hosts for training (local state only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from site_node.cli.options import settings_from, site_options
from site_node.training.jobs.config import DatasetConfig

__all__ = ["data"]


@click.group()
def data() -> None:
    """The site's private training datasets.

    \b
    Example:
        fedmq-site data list --config site.toml
    """


def _sources(cfg: DatasetConfig) -> list[str]:
    """What a dataset not hosted yet reads: its files, or its history selection."""
    if cfg.history is None:
        return list(cfg.paths)
    since = "" if cfg.history.since_days is None else f", last {cfg.history.since_days:g} days"
    return [f"history of {', '.join(cfg.history.devices)}{since}"]


@data.command("list")
@site_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_datasets(
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """List configured datasets and whether the datasite hosts them (rows, task, files).

    Reads the site's data directory only: syft is not started, the daemon may be running.

    \b
    Example:
        fedmq-site data list --config site.toml
        fedmq-site data list --data-dir /var/lib/fedmq-site --site-id press-1 --json
    """
    from site_node.training.hosted import read_hosted

    settings = settings_from(config, site_id, host, port, data_dir)
    hosted = {h.name: h for h in read_hosted(settings.data_dir)}
    configured = settings.training.datasets if settings.training is not None else []
    rows: list[dict[str, Any]] = []
    for cfg in configured:
        h = hosted.pop(cfg.name, None)
        rows.append(
            {
                "name": cfg.name,
                "task": cfg.task,
                "hosted": h is not None,
                "rows": h.rows if h else None,
                "paths": list(h.paths) if h else _sources(cfg),
            }
        )
    for h in hosted.values():  # hosted earlier, no longer configured
        rows.append(
            {"name": h.name, "task": h.task, "hosted": True, "rows": h.rows, "paths": list(h.paths)}
        )
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no datasets (add [[training.datasets]] to the site config)")
        return
    click.echo(f"{'NAME':<20}{'TASK':<16}{'HOSTED':<8}{'ROWS':>8}  PATHS")
    for r in rows:
        count = "-" if r["rows"] is None else str(r["rows"])
        hosted_text = "yes" if r["hosted"] else "no"
        click.echo(
            f"{r['name']:<20}{r['task']:<16}{hosted_text:<8}{count:>8}  {', '.join(r['paths'])}"
        )
