"""Waiting for the demo's processes: the coordinator's database, then every site live.

Readiness is read from the coordinator's database (the same view ``fedmq sites`` has),
so "live" means what it means everywhere else: status online, heartbeats on time, and a
registration that advertises the task (sites re-register once their datasite is up).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from coordinator.demo.procs import Child
from coordinator.store.read import DatabaseMissing, is_ready, open_db, sites

__all__ = ["StartupFailed", "site_states", "wait_for_db", "wait_for_sites"]


class StartupFailed(RuntimeError):
    """A child exited or did not become ready in time; the message names its log file."""


def wait_for_db(db: Path, coordinator: Child, timeout: float) -> None:
    """Until ``fedmq serve`` has created and migrated ``db``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not coordinator.alive():
            raise StartupFailed(f"the coordinator exited at start; see {coordinator.log}")
        try:
            conn = open_db(db)
        except (DatabaseMissing, sqlite3.Error):
            conn = None
        if conn is not None:
            try:
                if is_ready(conn):
                    return
            finally:
                conn.close()
        time.sleep(0.2)
    raise StartupFailed(
        f"the coordinator did not open {db} within {timeout:.0f} s; see {coordinator.log}"
    )


def site_states(db: Path, task: str) -> dict[str, str]:
    """``site -> "live" | "online" | "stale" | "offline"``; live = online with ``task``."""
    try:
        conn = open_db(db)
    except DatabaseMissing:
        return {}
    try:
        rows, _ = sites(conn)
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    out: dict[str, str] = {}
    for row in rows:
        live = row["state"] == "online" and task in row["tasks"]
        out[row["site"]] = "live" if live else str(row["state"])
    return out


def wait_for_sites(
    db: Path,
    children: Mapping[str, Child],
    task: str,
    timeout: float,
    progress: Callable[[dict[str, str], float], Any] | None = None,
    poll_s: float = 0.5,
) -> None:
    """Until every site in ``children`` is live; ``progress(states, elapsed_s)`` each poll.

    Raises:
        StartupFailed: a site process exited, or not all were live within ``timeout`` s.
    """
    start = time.monotonic()
    while True:
        states = site_states(db, task)
        view = {site: states.get(site, "starting") for site in children}
        elapsed = time.monotonic() - start
        if progress is not None:
            progress(view, elapsed)
        if all(state == "live" for state in view.values()):
            return
        for site, child in children.items():
            if not child.alive():
                raise StartupFailed(
                    f"site {site} exited (code {child.proc.returncode}) before it was live; "
                    f"see its log: {child.log}"
                )
        if elapsed > timeout:
            late = sorted(s for s, state in view.items() if state != "live")
            logs = ", ".join(str(children[s].log) for s in late)
            raise StartupFailed(
                f"site(s) {', '.join(late)} not live within {timeout:.0f} s; see {logs}"
            )
        time.sleep(poll_s)
