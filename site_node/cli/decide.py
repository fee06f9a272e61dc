"""The operator's decision on a pending training job, shared by ``approve`` and ``reject``.

The decision is written to the job store; the running daemon picks it up within ~1 s.
"""

from __future__ import annotations

from pathlib import Path

import click

from site_node.training.jobs.store import JobStore, JobStoreError, UnknownJobError

__all__ = ["NotFound", "NotPending", "decide"]


class NotFound(click.ClickException):
    """Unknown job: exit 3."""

    exit_code = 3


class NotPending(click.ClickException):
    """The job is not pending approval: exit 2."""

    exit_code = 2


def decide(jobs_path: Path, job_id: str, decision: str, reason: str = "") -> None:
    """Record ``decision`` for ``job_id``; one-line click errors (exit 3 unknown, 2 not pending)."""
    if not jobs_path.exists():
        raise NotFound(f"unknown job {job_id!r} (no jobs at this site)")
    store = JobStore(jobs_path)
    try:
        store.decide(job_id, decision, reason)
    except UnknownJobError as exc:
        raise NotFound(str(exc)) from None
    except JobStoreError as exc:
        raise NotPending(str(exc)) from None
    finally:
        store.close()
