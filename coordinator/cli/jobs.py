"""``fedmq jobs``: training jobs as the sites report them (pending approval included)."""

from __future__ import annotations

from pathlib import Path

import click

from coordinator.cli.output import connect, echo_json, table, training_db_option

__all__ = ["jobs"]

_HEADER = ("JOB", "RUN", "ROUND", "SITE", "STATE", "DETAIL")


@click.command()
@training_db_option
@click.option("--run", "run_id", help="Only jobs of this run.")
@click.option("--state", help="Only jobs in this state (e.g. pending_approval).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def jobs(db: Path | str, run_id: str | None, state: str | None, as_json: bool) -> None:
    """List training jobs: those `fedmq train` sent and every job a site reported.

    A job waiting for a site operator shows "pending approval at site X"; the coordinator
    never approves on a site's behalf (the operator runs `fedmq-site approve JOB`).

    \b
    Example:
        fedmq jobs --db fedmq.db
        fedmq jobs --run run-20250101-120000-ab12 --state pending_approval --json
    """
    reader = connect(db)
    rows = reader.jobs(run_id, state)
    reader.close()
    if as_json:
        echo_json(rows)
        return
    body = [
        (r["job_id"], r.get("run_id") or "-", r.get("round"), r["site"], r["state"], r["summary"])
        for r in rows
    ]
    click.echo(table(body, _HEADER))
