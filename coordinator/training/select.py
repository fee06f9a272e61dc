"""Which sites take part in a round: live (as ``fedmq sites`` computes it) and advertising
the task in their registration, with the code hash the sites agree on.

Registrations are read back as :class:`schemas.Registration` models through the store's
read side (``coordinator.store.read``), never as raw JSON.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from coordinator.store.read import registration, registrations
from coordinator.store.read import sites as site_summaries

__all__ = ["Offer", "choose_hash", "offers", "registered_rows"]


@dataclass(frozen=True)
class Offer:
    """A live site that advertises the task with ``code_hash``."""

    site: str
    code_hash: str
    approval_mode: str


def offers(conn: sqlite3.Connection, task: str, only: Iterable[str] | None = None) -> list[Offer]:
    """Live sites advertising ``task`` (restricted to ``only`` when given), by site id."""
    wanted = set(only) if only is not None else None
    summaries, _ = site_summaries(conn, state="online")
    live = {s["site"] for s in summaries}
    out = []
    for site, reg in registrations(conn).items():
        if site not in live or (wanted is not None and site not in wanted):
            continue
        for offer in reg.tasks:
            if offer.name == task:
                out.append(Offer(site, offer.code_hash, reg.approval_mode))
                break
    return out


def choose_hash(found: list[Offer]) -> tuple[str, str]:
    """The code hash most sites advertise, and a note naming the sites left out and why.

    The coordinator holds no task code: the sites' hashes are all it compares. A tie
    between the largest groups is no choice at all, so it is a TrainError that lists the
    groups (pick one with --sites).

    Raises:
        TrainError: no site, or two or more hashes tied for the most sites.
    """
    from coordinator.training.events import TrainError

    groups: dict[str, list[str]] = {}
    for o in sorted(found, key=lambda o: o.site):
        groups.setdefault(o.code_hash, []).append(o.site)
    if not groups:
        raise TrainError("no site advertises the task", "failed")
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    code_hash, chosen = ranked[0]
    if len(ranked) > 1 and len(ranked[1][1]) == len(chosen):
        listing = "; ".join(f"{h[:12]}: {', '.join(sites)}" for h, sites in ranked)
        raise TrainError(
            f"sites disagree on the task's code hash and no hash has the most sites "
            f"({listing}); pick one group with --sites, or give the sites the same task files",
            "failed",
        )
    note = ""
    if len(ranked) > 1:
        left = "; ".join(f"{', '.join(sites)} (runs {h[:12]})" for h, sites in ranked[1:])
        note = (
            f"sites disagree on the task's code hash: using {code_hash[:12]} "
            f"({len(chosen)} of {len(found)} sites: {', '.join(chosen)}); left out: {left}"
        )
    return code_hash, note


def registered_rows(conn: sqlite3.Connection, site: str, task: str) -> int | None:
    """The most rows one dataset of ``site`` holds for ``task``, as its registration says.

    A site describes each dataset as "<task> private rows"; when none names the task, its
    largest dataset bounds it. None when the site registered no datasets.
    """
    reg = registration(conn, site)
    if reg is None or not reg.datasets:
        return None
    for_task = [d.rows for d in reg.datasets if d.description.split(" ", 1)[0] == task]
    return max(for_task or [d.rows for d in reg.datasets])
