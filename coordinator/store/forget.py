"""Forget a site that is gone: ``fedmq sites forget ID [--purge]``.

Without ``purge`` only the site's entry goes (it leaves ``fedmq sites``); its telemetry,
messages, heartbeats and events stay queryable by id, and a ``forgotten`` event records
when. With ``purge`` every row the core tables hold for it goes as well (training runs
keep their job rows: a run's history does not change after the fact). Only a
deregistered site can be forgotten (its retained status and registration cleared, which
``fedmq-site deregister`` does): a site whose retained messages are still on the broker
would be listed again the next time serve subscribes. A site that publishes again is
listed again.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from coordinator.store import connect
from coordinator.store.read import sites as read_sites
from fedmq_runtime.clock import now_ms

__all__ = ["PURGED_TABLES", "SiteLive", "SiteRegistered", "SiteUnknown", "forget_site"]

# Core tables with a ``site`` column, purged with --purge (the sites row always goes).
PURGED_TABLES = (
    "telemetry",
    "messages",
    "heartbeats",
    "site_events",
    "gaps",
    "streams",
    "devices",
    "alarms",
)
LIVE = ("online", "stale", "conflict")


class SiteUnknown(LookupError):
    """No such site in the database."""


class SiteLive(RuntimeError):
    """The site is still live; ``str(exc)`` is its state."""


class SiteRegistered(RuntimeError):
    """The site is offline but its retained status or registration was never cleared."""


def forget_site(db: Path | str, site: str, purge: bool = False) -> dict[str, int]:
    """Remove ``site``'s entry (and with ``purge`` its data); rows deleted per table.

    Raises:
        SiteUnknown: no such site.
        SiteLive: the site is online, stale or in conflict (nothing is changed).
        SiteRegistered: offline, but not deregistered (nothing is changed).
    """
    conn = connect(db)
    conn.row_factory = sqlite3.Row
    try:
        with conn:  # one transaction: the state check and the deletes
            conn.execute("BEGIN IMMEDIATE")
            rows, _info = read_sites(conn)
            row = next((r for r in rows if r["site"] == site), None)
            if row is None:
                raise SiteUnknown(site)
            if row["state"] in LIVE:
                raise SiteLive(str(row["state"]))
            stored = conn.execute(
                "SELECT status, registration FROM sites WHERE site = ?", (site,)
            ).fetchone()
            if stored["status"] is not None or stored["registration"] is not None:
                raise SiteRegistered(site)
            deleted = {"sites": conn.execute("DELETE FROM sites WHERE site = ?", (site,)).rowcount}
            if purge:
                for table in PURGED_TABLES:
                    cur = conn.execute(f"DELETE FROM {table} WHERE site = ?", (site,))
                    deleted[table] = cur.rowcount
            else:
                conn.execute(
                    "INSERT INTO site_events (site, at, event, state_from, state_to, reason) "
                    "VALUES (?, ?, 'forgotten', ?, NULL, 'fedmq sites forget')",
                    (site, now_ms(), row["state"]),
                )
        return deleted
    finally:
        conn.close()
