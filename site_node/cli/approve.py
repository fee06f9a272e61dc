"""``fedmq-site approve JOB``: run a training job that waits for the operator."""

from __future__ import annotations

from pathlib import Path

import click

from site_node.cli.decide import decide
from site_node.cli.options import settings_from, site_options

__all__ = ["approve"]


@click.command()
@click.argument("job")
@site_options
def approve(
    job: str,
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
) -> None:
    """Approve a job that is pending approval; the daemon then runs it.

    \b
    Example:
        fedmq-site approve run7-r2-press-1 --config site.toml
    """
    settings = settings_from(config, site_id, host, port, data_dir)
    decide(settings.jobs_path, job, "approve")
    click.echo(f"approved {job}")
