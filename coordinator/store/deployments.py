"""The deployment tables' SQL (``deployments``, ``site_deployments``; migration
``deploy_0001_deployments``): writes for :class:`coordinator.store.SqliteStore` and the
read-only queries behind ``fedmq deployments``, the control API and the dashboard.

``deployments`` holds one row per requested deployment (``fedmq deploy``: the model
version, its task and code hash, cadence, rules, devices, whether it is a rollback, who
asked). ``site_deployments`` holds per site and deployment the latest state: ``sent`` when
the coordinator published the command, then what the site reported in its durable
:class:`schemas.DeploymentStatus` (accepted, pending_approval, active, rejected, failed,
replaced) with the reason, since when, and the version that ran before. ``activated_at``
is set when the site reported the deployment active and stays when it is later replaced:
the activation history that answers "what ran before at this site" (``--rollback``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from fedmq_runtime.clock import now_ms

__all__ = [
    "EXPIRY_GRACE_MS",
    "TERMINAL_STATES",
    "DeploymentRow",
    "SiteDeploymentRow",
    "active_models",
    "deployment_rows",
    "deployment_view",
    "insert_deployment",
    "save_site_deployments",
    "site_deployment",
    "site_deployment_rows",
    "site_history",
]

# A site accepts a command up to this long after its expires_at (its clock skew allowance,
# site_node's command guard): only later is an unanswered command surely dead.
EXPIRY_GRACE_MS = 30_000

# States after which a site does nothing more with a deployment unless asked again.
TERMINAL_STATES = frozenset({"active", "rejected", "failed", "replaced"})


class DeploymentRow(NamedTuple):
    """One requested deployment (``deployments``; ``fedmq deploy``)."""

    deployment_id: str
    created_at: int
    model_version: str
    task: str
    code_hash: str
    cadence_s: float | None
    rules: tuple[str, ...]
    devices: tuple[str, ...]
    rollback: bool
    requested_by: str
    expires_at: int | None = None


class SiteDeploymentRow(NamedTuple):
    """Where one deployment stands at one site (``site_deployments``): ``sent`` by the
    coordinator (``seq`` None), then the state the site last reported. ``activated_at``:
    when the site reported it active (kept after it is replaced: the history)."""

    site: str
    deployment_id: str
    model_version: str
    task: str
    state: str
    reason: str
    since: int
    previous_version: str
    updated_at: int
    activated_at: int | None = None
    epoch: str = ""
    seq: int | None = None


_DEPLOY_COLS = (
    "deployment_id, created_at, model_version, task, code_hash, cadence_s, rules, devices, "
    "rollback, requested_by, expires_at"
)
_SITE_COLS = (
    "site, deployment_id, model_version, task, state, reason, since, previous_version, "
    "updated_at, activated_at, epoch, seq"
)


def _deployment(row: Sequence[Any]) -> DeploymentRow:
    return DeploymentRow(
        row[0], row[1], row[2], row[3], row[4], row[5], tuple(json.loads(row[6] or "[]")),
        tuple(json.loads(row[7] or "[]")), bool(row[8]), row[9] or "", row[10],
    )  # fmt: skip


def _site(row: Sequence[Any]) -> SiteDeploymentRow:
    return SiteDeploymentRow(*row)


# Writes (SqliteStore) -------------------------------------------------------------------


def insert_deployment(
    conn: sqlite3.Connection, row: DeploymentRow, sites: Iterable[SiteDeploymentRow]
) -> None:
    """Record a requested deployment and its per-site rows (in the open transaction)."""
    conn.execute(
        f"INSERT INTO deployments ({_DEPLOY_COLS}) VALUES ({', '.join('?' * 11)})",
        (
            row.deployment_id, row.created_at, row.model_version, row.task, row.code_hash,
            row.cadence_s, json.dumps(list(row.rules)), json.dumps(list(row.devices)),
            int(row.rollback), row.requested_by, row.expires_at,
        ),
    )  # fmt: skip
    save_site_deployments(conn, sites)


def save_site_deployments(conn: sqlite3.Connection, rows: Iterable[SiteDeploymentRow]) -> None:
    """Insert or replace per-site rows (key: site, deployment_id)."""
    conn.executemany(
        f"INSERT OR REPLACE INTO site_deployments ({_SITE_COLS}) VALUES ({', '.join('?' * 12)})",
        [tuple(r) for r in rows],
    )


def site_deployment(
    conn: sqlite3.Connection, site: str, deployment_id: str
) -> SiteDeploymentRow | None:
    row = conn.execute(
        f"SELECT {_SITE_COLS} FROM site_deployments WHERE site = ? AND deployment_id = ?",
        (site, deployment_id),
    ).fetchone()
    return None if row is None else _site(tuple(row))


def deployment_rows(
    conn: sqlite3.Connection, deployment_id: str | None = None
) -> list[DeploymentRow]:
    """Requested deployments (one, or all), oldest first."""
    sql = f"SELECT {_DEPLOY_COLS} FROM deployments"
    args: tuple[Any, ...] = ()
    if deployment_id is not None:
        sql += " WHERE deployment_id = ?"
        args = (deployment_id,)
    rows = conn.execute(sql + " ORDER BY created_at, deployment_id", args).fetchall()
    return [_deployment(tuple(r)) for r in rows]


def site_deployment_rows(
    conn: sqlite3.Connection, site: str | None = None, deployment_id: str | None = None
) -> list[SiteDeploymentRow]:
    """Per-site rows (of a site, of a deployment), by site then oldest first."""
    where, args = [], []
    if site is not None:
        where.append("site = ?")
        args.append(site)
    if deployment_id is not None:
        where.append("deployment_id = ?")
        args.append(deployment_id)
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT {_SITE_COLS} FROM site_deployments{cond} ORDER BY site, since, updated_at",
        args,
    ).fetchall()
    return [_site(tuple(r)) for r in rows]


def site_history(conn: sqlite3.Connection, site: str) -> list[SiteDeploymentRow]:
    """The deployments that ever became active at ``site``, the latest activation first."""
    rows = conn.execute(
        f"SELECT {_SITE_COLS} FROM site_deployments WHERE site = ? AND activated_at IS NOT NULL "
        "ORDER BY activated_at DESC, updated_at DESC",
        (site,),
    ).fetchall()
    return [_site(tuple(r)) for r in rows]


# Reads (read-only connections: CLI, API, dashboard) ---------------------------------------


def _has_tables(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1 FROM site_deployments LIMIT 1")
    except sqlite3.OperationalError:  # serve has not migrated this database yet
        return False
    return True


def active_models(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Per site, the deployment active there now (the latest activated one still active):
    ``model_version, deployment_id, task, since`` (since: when it became active)."""
    if not _has_tables(conn):
        return {}
    out: dict[str, dict[str, Any]] = {}
    rows = conn.execute(
        "SELECT site, model_version, deployment_id, task, activated_at FROM site_deployments "
        "WHERE state = 'active' ORDER BY site, activated_at"
    ).fetchall()
    for site, version, dep, task, at in rows:  # the latest activation wins
        out[str(site)] = {"model_version": version, "deployment_id": dep, "task": task,
                          "since": at}  # fmt: skip
    return out


def deployment_view(
    conn: sqlite3.Connection,
    site: str | None = None,
    all_history: bool = False,
    deployment_id: str | None = None,
    now: int | None = None,
) -> list[dict[str, Any]]:
    """What ``fedmq deployments`` shows.

    Default: one row per site that ever had a deployment: the ``active`` version, since
    when, its cadence and rules, and the ``latest`` deployment sent there (its state and
    reason: e.g. a newer version pending approval or rejected while the older one runs).
    ``all_history`` (or ``deployment_id``): every per-site row, oldest first, with the
    requested deployment's settings. ``expired``: still ``sent`` after the command's
    ``expires_at`` and the site's skew allowance (at ``now``): it will not act on it.
    """
    if not _has_tables(conn):
        return []
    where, args = [], []
    if site is not None:
        where.append("s.site = ?")
        args.append(site)
    if deployment_id is not None:
        where.append("s.deployment_id = ?")
        args.append(deployment_id)
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        "SELECT s.site, s.deployment_id, s.model_version, s.task, s.state, s.reason, s.since, "
        "s.previous_version, s.updated_at, s.activated_at, d.created_at, d.cadence_s, "
        "d.rules, d.devices, d.rollback, d.requested_by, d.code_hash, d.expires_at "
        f"FROM site_deployments s LEFT JOIN deployments d USING (deployment_id){cond} "
        "ORDER BY s.site, coalesce(d.created_at, s.since), s.updated_at",
        args,
    ).fetchall()
    now = now_ms() if now is None else now
    items = [_item(tuple(r), now) for r in rows]
    if all_history or deployment_id is not None:
        return items
    out: dict[str, dict[str, Any]] = {}
    for item in items:  # oldest first: the last one seen is the latest
        entry = out.setdefault(item["site"], {"site": item["site"], "active": None})
        entry["latest"] = item
        if item["state"] == "active":
            current = entry["active"]
            if current is None or (item["activated_at"] or 0) >= (current["activated_at"] or 0):
                entry["active"] = item
    return [out[k] for k in sorted(out)]


def _item(r: Sequence[Any], now: int) -> dict[str, Any]:
    # Still only sent after its command expired: the site never answered (offline, or it
    # dropped the command), and it will not act on it any more.
    expired = r[4] == "sent" and r[17] is not None and r[17] + EXPIRY_GRACE_MS < now
    return {
        "expires_at": r[17], "expired": expired,
        "site": r[0], "deployment_id": r[1], "model_version": r[2], "task": r[3],
        "state": r[4], "reason": r[5], "since": r[6], "previous_version": r[7],
        "updated_at": r[8], "activated_at": r[9], "created_at": r[10], "cadence_s": r[11],
        "rules": json.loads(r[12]) if r[12] else [], "devices": json.loads(r[13]) if r[13] else [],
        "rollback": bool(r[14]), "requested_by": r[15] or "", "code_hash": r[16] or "",
    }  # fmt: skip
