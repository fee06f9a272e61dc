"""``fedmq-site jobs``: training jobs this site received, from its job store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from site_node.cli.options import settings_from, site_options
from site_node.training.jobs.store import JobStore

__all__ = ["jobs"]


@click.command()
@site_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def jobs(
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    as_json: bool,
    limit: int,
) -> None:
    """List training jobs, newest first: job, run, round, task, state, received, reason.

    Jobs in state pending_approval wait for `fedmq-site approve JOB` or `reject JOB`.

    \b
    Example:
        fedmq-site jobs --config site.toml
        fedmq-site jobs --config site.toml --json
    """
    settings = settings_from(config, site_id, host, port, data_dir)
    path = settings.jobs_path
    records = []
    if path.exists():
        store = JobStore(path)
        try:
            records = store.recent(limit)
        finally:
            store.close()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records]))
        return
    if not records:
        click.echo("no jobs")
        return
    click.echo(
        f"{'JOB':<24}{'RUN':<16}{'ROUND':>5}  {'TASK':<14}{'STATE':<18}{'RECEIVED':<20}REASON"
    )
    for r in records:
        received = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.received_ms / 1000))
        click.echo(
            f"{r.job_id:<24}{r.run_id:<16}{r.round:>5}  {r.task:<14}{r.state:<18}{received:<20}"
            f"{r.reason or ''}"
        )
