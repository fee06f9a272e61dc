"""``fedmq-site approve`` and ``fedmq-site reject``: the operator's decision on a training
job or a deployment that waits for approval.

The id is looked up among the site's jobs, then its deployments; the decision is written
to that store and the running daemon picks it up within ~1 s.
"""

from __future__ import annotations

from pathlib import Path

import click

from fedmq_runtime.cli import NotFound, UsageError
from site_node.cli.options import settings_from, site_options
from site_node.deployment.store import (
    DeploymentStore,
    DeploymentStoreError,
    UnknownDeploymentError,
    deployments_dir,
)
from site_node.settings import SiteSettings
from site_node.training.jobs.store import JobStore, JobStoreError, UnknownJobError

__all__ = ["approve", "decide", "decide_any", "decide_deployment", "reject"]


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


def decide_deployment(directory: Path, deployment_id: str, decision: str, reason: str = "") -> None:
    """Record ``decision`` for a pending deployment kept in ``directory``; errors as
    :func:`decide`."""
    try:
        store = DeploymentStore(directory, create=False)
    except UnknownDeploymentError:
        raise NotFound(
            f"unknown deployment {deployment_id!r} (no deployments at this site)"
        ) from None
    try:
        store.decide(deployment_id, decision, reason)
    except UnknownDeploymentError as exc:
        raise NotFound(str(exc)) from None
    except DeploymentStoreError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()


def decide_any(settings: SiteSettings, item: str, decision: str, reason: str = "") -> str:
    """Decide the job or, failing that, the deployment ``item``; returns which it was."""
    try:
        decide(settings.jobs_path, item, decision, reason)
        return "job"
    except NotFound:
        pass
    try:
        decide_deployment(deployments_dir(settings.data_dir), item, decision, reason)
    except NotFound:
        raise NotFound(f"unknown job or deployment {item!r} at this site") from None
    return "deployment"


@click.command()
@click.argument("item", metavar="JOB_OR_DEPLOYMENT")
@site_options
def approve(
    item: str,
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
) -> None:
    """Approve a training job or a deployment that is pending approval; the daemon then
    runs the job, or starts scoring with the deployed model.

    \b
    Example:
        fedmq-site approve run7-r2-press-1 --config site.toml
        fedmq-site approve dep-3f2a9c --config site.toml
    """
    settings = settings_from(config, site_id, host, port, data_dir)
    decide_any(settings, item, "approve")
    click.echo(f"approved {item}")


@click.command()
@click.argument("item", metavar="JOB_OR_DEPLOYMENT")
@click.option("--reason", required=True, help="Why (sent to the coordinator).")
@site_options
def reject(
    item: str,
    reason: str,
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
) -> None:
    """Reject a training job or a deployment that is pending approval; the coordinator is
    told the reason.

    \b
    Example:
        fedmq-site reject run7-r2-press-1 --reason "line down for maintenance" -c site.toml
        fedmq-site reject dep-3f2a9c --reason "not during the audit" -c site.toml
    """
    settings = settings_from(config, site_id, host, port, data_dir)
    decide_any(settings, item, "reject", reason)
    click.echo(f"rejected {item}")
