"""``fedmq-site reject JOB --reason TEXT``: refuse a training job that waits for the operator."""

from __future__ import annotations

from pathlib import Path

import click

from site_node.cli.decide import decide
from site_node.cli.options import settings_from, site_options

__all__ = ["reject"]


@click.command()
@click.argument("job")
@click.option("--reason", required=True, help="Why (sent to the coordinator).")
@site_options
def reject(
    job: str,
    reason: str,
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
) -> None:
    """Reject a job that is pending approval; the coordinator is told the reason.

    \b
    Example:
        fedmq-site reject run7-r2-press-1 --reason "line down for maintenance" -c site.toml
    """
    settings = settings_from(config, site_id, host, port, data_dir)
    decide(settings.jobs_path, job, "reject", reason)
    click.echo(f"rejected {job}")
