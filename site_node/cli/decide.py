"""``fedmq-site approve`` and ``fedmq-site reject``: the operator's decision on a training
job that waits for approval.

The decision is written to the job store; the running daemon picks it up within ~1 s.
"""

from __future__ import annotations

from pathlib import Path

import click

from fedmq_runtime.cli import NotFound, UsageError
from site_node.cli.options import settings_from, site_options
from site_node.training.jobs.store import JobStore, JobStoreError, UnknownJobError

__all__ = ["approve", "decide", "reject"]


def decide(jobs_path: Path, job_id: str, decision: str, reason: str = "") -> None:
    """Record ``decision`` for ``job_id``; one-line click errors (exit 3 unknown, 2 not pending)."""
    if not jobs_path.exists():
        raise NotFound(f"unknown job {job_id!r} (no jobs at this site)")
    store = JobStore(jobs_path)
    try:
        store.decide(job_id, decision, reason)
    except UnknownJobError as exc:
        raise NotFound(str(exc)) from None
    except JobStoreError as exc:  # not pending approval, or already decided
        raise UsageError(str(exc)) from None
    finally:
        store.close()


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
