"""``fedmq-site deployments``: models deployed to this site, from its deployment store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from site_node.cli.options import settings_from, site_options
from site_node.deployment.store import DB_FILE, DeploymentStore, deployments_dir

__all__ = ["deployments"]


@click.command()
@site_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def deployments(
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    as_json: bool,
    limit: int,
) -> None:
    """List deployments, newest first: deployment, model version, task, state, since,
    previous version, reason. At most one is active (the model this site scores with).

    Deployments in state pending_approval wait for `fedmq-site approve DEPLOYMENT` or
    `fedmq-site reject DEPLOYMENT --reason ...`.

    \b
    Example:
        fedmq-site deployments --config site.toml
        fedmq-site deployments --config site.toml --json
    """
    settings = settings_from(config, site_id, host, port, data_dir)
    directory = deployments_dir(settings.data_dir)
    records = []
    if (directory / DB_FILE).exists():
        store = DeploymentStore(directory, create=False)
        try:
            records = store.recent(limit)
        finally:
            store.close()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records]))
        return
    if not records:
        click.echo("no deployments")
        return
    click.echo(
        f"{'DEPLOYMENT':<26}{'VERSION':<18}{'TASK':<14}{'STATE':<18}{'SINCE':<21}"
        f"{'PREVIOUS':<18}REASON"
    )
    for r in records:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.since_ms / 1000))
        click.echo(
            f"{r.deployment_id:<26}{r.model_version:<18}{r.task:<14}{r.state:<18}{since:<21}"
            f"{r.previous_version or '-':<18}{r.reason}"
        )
