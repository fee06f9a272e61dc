"""``fedmq-site deregister``: clear the site's retained status and registration."""

from __future__ import annotations

from pathlib import Path

import click

from schemas import Topics
from site_node.bus import BusError, publish_once
from site_node.cli.options import settings_from, site_options

__all__ = ["deregister"]

EXIT_BROKER = 4


@click.command()
@site_options
def deregister(
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
) -> None:
    """Remove the site from the broker's retained state (empty retained payloads).

    Stop the daemon first: a running site republishes both on its next connect.

    \b
    Example:
        fedmq-site deregister --config site.toml
    """
    settings = settings_from(config, site_id, host, port, data_dir)
    topics = Topics(settings.mqtt.prefix)
    site = settings.site_id
    try:
        publish_once(
            settings.mqtt,
            f"{site}-deregister",
            [(topics.registration(site), b"", True), (topics.status(site), b"", True)],
        )
    except BusError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(EXIT_BROKER) from None
    click.echo(f"deregistered {site}")
