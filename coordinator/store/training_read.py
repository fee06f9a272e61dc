"""Read-only queries of the training tables for ``fedmq runs/run/jobs/models``.

Plain ``sqlite3`` (no sqlite-utils, pydantic, torch or paho), like
``coordinator.store.read``; the same queries run on PostgreSQL through
``coordinator.store.pg_compat.CompatConnection``. A database on which ``fedmq train`` never
ran has no training tables: queries then return nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

__all__ = [
    "announced_api_url", "api_url", "evaluations", "jobs", "model_blob", "models",
    "run_detail", "runs",
]  # fmt: skip


def _has(conn: sqlite3.Connection, table: str) -> bool:
    if not isinstance(conn, sqlite3.Connection):  # PostgreSQL (coordinator.store.pg_compat)
        found = conn.execute("SELECT to_regclass(?) IS NOT NULL", (table,)).fetchone()
        return bool(found and found[0])
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return row is not None


def _decode(row: sqlite3.Row, *json_cols: str) -> dict[str, Any]:
    out = dict(row)
    for col in json_cols:
        if out.get(col):
            out[col] = json.loads(out[col])
    return out


def runs(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """Newest runs first, with how many rounds aggregated and the last test RMSE."""
    if not _has(conn, "runs"):
        return []
    rows = conn.execute(
        "SELECT r.run_id, r.task, r.strategy, r.rounds, r.min_sites, r.sites, r.state, "
        "r.reason, r.created_at, r.finished_at, "
        "(SELECT count(*) FROM rounds d WHERE d.run_id = r.run_id AND d.state = 'aggregated') "
        "AS aggregated, "
        "(SELECT test_rmse FROM rounds d WHERE d.run_id = r.run_id AND d.state = 'aggregated' "
        "ORDER BY round DESC LIMIT 1) AS test_rmse "
        "FROM runs r ORDER BY r.created_at DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [_decode(r, "sites") for r in rows]


def run_detail(conn: sqlite3.Connection, run_id: str) -> dict[str, Any] | None:
    """One run with its rounds (oldest first), or None."""
    if not _has(conn, "runs"):
        return None
    row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    out = _decode(row, "sites", "hyperparams", "spec")
    rounds = conn.execute(
        "SELECT * FROM rounds WHERE run_id = ? ORDER BY round", (run_id,)
    ).fetchall()
    out["rounds_planned"] = out["rounds"]  # "rounds" becomes the list of round rows
    out["rounds"] = [_decode(r, "selected", "metrics") for r in rounds]
    evals = evaluations(conn, run_id)
    by_model = {e["model_id"]: e for e in evals}
    for r in out["rounds"]:
        r["evaluation"] = by_model.get(r["model_id"]) if r.get("model_id") else None
    out["evaluations"] = evals
    out["final_evaluation"] = next((e for e in evals if e["final"]), None)
    return out


def evaluations(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    """The federated evaluations of a run's global models, in the order they were measured.

    Each: ``model_id``, ``round`` (the round whose jobs measured it: the next training
    round, or the final evaluation round ``rounds + 1``), ``final``, ``metrics`` (per
    metric: weighted ``value``, ``sites`` of ``of_sites``, ``n_samples``, ``weighting``,
    and ``missing``: site -> reason) and ``sites`` (per site: ``n_samples``, ``values``,
    ``missing``, ``error`` for a reason that covers its whole evaluation).
    """
    if not _has(conn, "eval_rounds"):
        return []
    out: dict[str, dict[str, Any]] = {}
    for row in conn.execute(
        "SELECT * FROM eval_rounds WHERE run_id = ? ORDER BY round, metric", (run_id,)
    ).fetchall():
        e = out.setdefault(
            row["model_id"],
            {"model_id": row["model_id"], "round": row["round"], "final": bool(row["final"]),
             "metrics": {}, "sites": {}},
        )  # fmt: skip
        e["metrics"][row["metric"]] = {
            "value": row["value"], "sites": row["sites"], "of_sites": row["of_sites"],
            "n_samples": row["n_samples"], "weighting": row["weighting"], "missing": {},
        }  # fmt: skip
    for row in conn.execute(
        "SELECT * FROM eval_sites WHERE run_id = ? ORDER BY site, metric", (run_id,)
    ).fetchall():
        found = out.get(row["model_id"])
        if found is None:
            continue
        site = found["sites"].setdefault(
            row["site"], {"n_samples": row["n_samples"], "values": {}, "missing": {}, "error": None}
        )
        if row["metric"] == "*":
            site["error"] = row["missing"]
        elif row["value"] is not None:
            site["values"][row["metric"]] = row["value"]
        else:
            site["missing"][row["metric"]] = row["missing"]
    for e in out.values():
        for name, m in e["metrics"].items():
            for site_id, site in e["sites"].items():
                if name not in site["values"]:
                    m["missing"][site_id] = (
                        site["error"] or site["missing"].get(name) or "not reported by the site"
                    )
    return sorted(out.values(), key=lambda e: (e["round"], e["model_id"]))


def _site_jobs(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """The latest status each site reported per job (from what serve stored)."""
    rows = conn.execute(
        "SELECT m.site, m.seq, m.job_id, m.payload, m.received_at FROM messages m "
        "JOIN (SELECT job_id, site, max(seq) AS seq FROM messages "
        "      WHERE job_id IS NOT NULL AND kind = 'job_status' GROUP BY job_id, site) last "
        "ON m.site = last.site AND m.seq = last.seq"
    ).fetchall()
    out = {}
    for r in rows:
        status = json.loads(r["payload"])
        out[r["job_id"]] = {
            "job_id": r["job_id"], "site": r["site"], "run_id": status.get("run_id") or None,
            "round": status.get("round"), "state": status.get("state"),
            "progress": status.get("progress"), "reason": status.get("reason"),
            "updated_at": r["received_at"], "seq": r["seq"],
        }  # fmt: skip
    return out


_VERDICTS = frozenset({"excluded"})


def jobs(
    conn: sqlite3.Connection, run_id: str | None = None, state: str | None = None
) -> list[dict[str, Any]]:
    """Jobs of ``fedmq train`` runs merged with every job the sites reported.

    The site's latest reported status wins over the train process's view, so a job
    waiting for its operator shows ``pending_approval`` even when no train process runs.
    """
    reported = _site_jobs(conn)
    out: dict[str, dict[str, Any]] = {}
    if _has(conn, "train_jobs"):
        for r in conn.execute("SELECT * FROM train_jobs").fetchall():
            out[r["job_id"]] = {**_decode(r, "metrics"), "source": "train"}
    for job_id, status in reported.items():
        mine = out.get(job_id)
        if mine is None:
            out[job_id] = {**status, "late": 0, "source": "site"}
        elif mine.get("state") in _VERDICTS:
            continue  # the coordinator's verdict on the result outlives the site's "done"
        elif status["seq"] > (mine.get("status_seq") or 0):
            mine.update({k: status[k] for k in ("state", "progress", "reason", "updated_at")})
    rows = list(out.values())
    if run_id is not None:
        rows = [r for r in rows if r.get("run_id") == run_id]
    if state is not None:
        rows = [r for r in rows if r.get("state") == state]
    for r in rows:
        r["summary"] = _summary(r)
    rows.sort(key=lambda r: (r.get("run_id") or "", r.get("round") or 0, r.get("site") or ""))
    return rows


def _summary(job: dict[str, Any]) -> str:
    state, site = job.get("state"), job.get("site")
    if state == "pending_approval":
        return f"pending approval at site {site}"
    if state == "running" and job.get("progress") is not None:
        return f"running at site {site} ({job['progress']:.0%})"
    reason = f": {job['reason']}" if job.get("reason") else ""
    late = " (late, not aggregated)" if job.get("late") else ""
    return f"{state} at site {site}{reason}{late}"


def models(conn: sqlite3.Connection, run_id: str | None = None) -> list[dict[str, Any]]:
    """Model versions (no weights), newest first."""
    if not _has(conn, "models"):
        return []
    sql = (
        "SELECT model_id, run_id, round, task, created_at, sha256, size, n_sites, n_samples, "
        "metrics, test_rmse FROM models"
    )
    args: tuple[Any, ...] = ()
    if run_id is not None:
        sql += " WHERE run_id = ?"
        args = (run_id,)
    rows = conn.execute(sql + " ORDER BY created_at DESC, round DESC", args).fetchall()
    return [_decode(r, "metrics") for r in rows]


def model_blob(conn: sqlite3.Connection, model_id: str) -> bytes | None:
    """The model's npz bytes, verified against its stored sha256 (ValueError if not)."""
    if not _has(conn, "models"):
        return None
    row = conn.execute(
        "SELECT weights, sha256, size FROM models WHERE model_id = ?", (model_id,)
    ).fetchone()
    if row is None:
        return None
    raw = bytes(row["weights"])
    if len(raw) != row["size"] or hashlib.sha256(raw).hexdigest() != row["sha256"]:
        raise ValueError(f"model {model_id}: stored weights fail their sha256 check")
    return raw


def api_url(conn: sqlite3.Connection) -> str | None:
    """The control API URL the database's ``fedmq serve`` announced, if any."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'api_url'").fetchone()
    return None if row is None else str(row[0])


def announced_api_url(url: str) -> str | None:
    """The control API URL announced in the PostgreSQL database at ``url``; None when
    none was, or the database cannot be read (the caller falls back to a default)."""
    import psycopg

    from coordinator.store.pg_compat import connect

    try:
        conn = connect(url)
    except psycopg.Error:
        return None
    try:
        return api_url(conn) if _has(conn, "meta") else None  # type: ignore[arg-type]
    except psycopg.Error:
        return None
    finally:
        conn.close()
