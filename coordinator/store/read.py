"""Read-only access to the coordinator database: the :class:`StoreReader` interface the
read commands use, and its SQLite implementation :class:`SqliteReader`.

The writer side is :class:`coordinator.store.Store`; this is the reader side, a protocol
of its own because a reader is another process that opens the database read-only. Plain
``sqlite3`` on purpose: ``fedmq sites`` must answer in well under 0.3 s, and importing
sqlite-utils alone takes ~0.5 s here (pydantic ~0.3 s). Works while ``serve`` writes (WAL
readers never block the writer) and when it is stopped.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from coordinator.ingest.liveness import evaluate
from fedmq_runtime.clock import now_ms

if TYPE_CHECKING:
    from schemas import Registration

__all__ = [
    "ALIVE_WINDOW_MS",
    "DatabaseMissing",
    "NotAFedmqDatabase",
    "SqliteReader",
    "StoreReader",
    "active_alarm_counts",
    "alarm_mark",
    "alarms",
    "alarms_by_id",
    "coordinator_info",
    "dead_letter_counts",
    "dead_letters",
    "dead_letters_page",
    "event_counts",
    "events",
    "events_after",
    "fleet",
    "heartbeat_series",
    "high_water",
    "is_ready",
    "open_db",
    "open_fedmq_db",
    "predictions",
    "registration",
    "registrations",
    "round_timings",
    "rounds_high_water",
    "samples_after",
    "site_detail",
    "site_sensors",
    "site_states",
    "sites",
    "streams",
    "telemetry",
    "telemetry_counts",
    "telemetry_window",
]

# The writer stamps ``alive_at`` every liveness tick (0.5 s); older means not running.
ALIVE_WINDOW_MS = 5_000
# A site id stays "in conflict" this long after two of its streams last interleaved
# (the writer reports a conflict at most once a minute, so never shorter than that).
CONFLICT_WINDOW_MS = 120_000


class DatabaseMissing(Exception):
    """The database file does not exist (the coordinator never ran with this path)."""


class NotAFedmqDatabase(Exception):
    """The file exists but is not a coordinator database (or not a database at all)."""


def open_db(path: Path | str) -> sqlite3.Connection:
    """Open read-only; raise DatabaseMissing when there is no such file."""
    p = Path(path)
    if not p.is_file():
        raise DatabaseMissing(str(p))
    conn = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def is_ready(conn: sqlite3.Connection) -> bool:
    """Whether ``serve`` has created and migrated this database (its core tables read)."""
    try:
        conn.execute("SELECT 1 FROM sites LIMIT 1")
        conn.execute("SELECT 1 FROM meta LIMIT 1")
    except sqlite3.Error:
        return False
    return True


def open_fedmq_db(path: Path | str) -> sqlite3.Connection:
    """Open read-only a database ``serve`` created.

    Raises:
        DatabaseMissing: there is no such file.
        NotAFedmqDatabase: the file is not a coordinator database (the reason as message).
    """
    conn = open_db(path)
    try:
        conn.execute("SELECT 1 FROM sites LIMIT 1")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise NotAFedmqDatabase(str(exc)) from None
    return conn


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def coordinator_info(conn: sqlite3.Connection, now: int | None = None) -> dict[str, Any]:
    """Whether ``serve`` is running on this database, judged by its periodic stamp."""
    now = now_ms() if now is None else now
    alive_at = int(_meta(conn, "alive_at") or 0)
    return {
        "running": bool(alive_at) and now - alive_at <= ALIVE_WINDOW_MS,
        "alive_at": alive_at or None,
        "session": int(_meta(conn, "session") or 0),
        "patience": float(_meta(conn, "patience") or 3.0),
    }


def _col(row: sqlite3.Row, name: str, default: Any = None) -> Any:
    """A column a database written by an older ``serve`` may not have yet."""
    return row[name] if name in row.keys() else default  # noqa: SIM118 (Row: in = values)


def _summary(row: sqlite3.Row, patience: float, now: int) -> dict[str, Any]:
    reg: dict[str, Any] = json.loads(row["registration"]) if row["registration"] else {}
    state, reason = evaluate(
        row["status"], row["last_alive"] or 0, row["interval_s"] or 10.0, patience, now
    )
    conflict_at = _col(row, "conflict_at", 0) or 0
    conflict = bool(conflict_at) and now - conflict_at <= CONFLICT_WINDOW_MS
    if conflict:
        state, reason = "conflict", _col(row, "conflict_reason") or "two streams interleave"
    hier = reg.get("hierarchy") or {}
    place = "/".join(v for v in (hier.get(k) for k in ("enterprise", "site", "area", "line")) if v)
    loc = reg.get("location")
    if not place and loc:
        place = f"{loc['lat']:.4f},{loc['lon']:.4f}"
    device = reg.get("device") or {}
    return {
        "site": row["site"],
        "state": state,
        "reason": reason,
        "registered": bool(reg),
        "name": reg.get("name", ""),
        "last_seen": row["last_seen"],
        "session": row["session"],
        "device": device.get("hostname") or "",
        "cuda": bool(device.get("cuda")),
        "outbox_depth": row["outbox_depth"],
        "outbox_dropped": row["outbox_dropped"],
        "acked": row["acked"],
        "epoch": _col(row, "epoch", ""),
        "conflict": conflict,
        "outbox_error": _col(row, "outbox_error"),
        "samples_dropped": _col(row, "samples_dropped", 0),
        "tasks": [t["name"] for t in reg.get("tasks", ())],
        "location": place,
    }


def sites(conn: sqlite3.Connection, state: str | None = None, now: int | None = None) -> Any:
    """Every site with its state computed now from stored status and heartbeats."""
    now = now_ms() if now is None else now
    info = coordinator_info(conn, now)
    rows = conn.execute("SELECT * FROM sites ORDER BY site").fetchall()
    out = [_summary(r, info["patience"], now) for r in rows]
    if state is not None:
        out = [s for s in out if s["state"] == state]
    return out, info


def site_detail(conn: sqlite3.Connection, site: str, events_limit: int = 20) -> Any:
    """Registration, recent events and the latest heartbeat of one site, or None."""
    row = conn.execute("SELECT * FROM sites WHERE site = ?", (site,)).fetchone()
    if row is None:
        return None
    info = coordinator_info(conn)
    hb = conn.execute(
        "SELECT * FROM heartbeats WHERE site = ? ORDER BY received_at DESC LIMIT 1", (site,)
    ).fetchone()
    return {
        **_summary(row, info["patience"], now_ms()),
        "registration": json.loads(row["registration"]) if row["registration"] else None,
        "heartbeat": dict(hb) if hb is not None else None,
        "events": events(conn, site=site, limit=events_limit),
        "messages": conn.execute(
            "SELECT count(*) FROM messages WHERE site = ?", (site,)
        ).fetchone()[0],
        "streams": streams(conn, site),
    }


def streams(conn: sqlite3.Connection, site: str) -> list[dict[str, Any]]:
    """Every stream (epoch) of a site, newest first, with its stored and acked seqs."""
    try:
        rows = conn.execute(
            "SELECT epoch, first_seen, last_seen, acked FROM streams WHERE site = ? "
            "ORDER BY first_seen DESC",
            (site,),
        ).fetchall()
    except sqlite3.OperationalError:  # written by an older serve: one stream
        return []
    out = []
    for r in rows:
        (count,) = conn.execute(
            "SELECT count(*) FROM messages WHERE site = ? AND epoch = ?", (site, r["epoch"])
        ).fetchone()
        out.append({**dict(r), "messages": count})
    return out


def telemetry(
    conn: sqlite3.Connection,
    site: str,
    device: str | None = None,
    sensor: str | None = None,
    since: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The newest ``limit`` samples of a site (filtered), oldest first."""
    where, args = ["site = ?"], [site]
    for column, value in (("device", device), ("name", sensor)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if since is not None:
        where.append("ts >= ?")
        args.append(since)  # type: ignore[arg-type]
    sql = (
        "SELECT ts, device, name, value, unit, quality, historical, seq, epoch FROM telemetry "
        f"WHERE {' AND '.join(where)} ORDER BY ts DESC, rowid DESC LIMIT ?"
    )
    rows = conn.execute(sql, (*args, limit)).fetchall()
    return [dict(r) for r in reversed(rows)]


def events(
    conn: sqlite3.Connection, site: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The newest ``limit`` site events, newest first."""
    sql = "SELECT site, at, event, state_from, state_to, reason, session FROM site_events"
    args: tuple[Any, ...] = ()
    if site is not None:
        sql += " WHERE site = ?"
        args = (site,)
    rows = conn.execute(sql + " ORDER BY at DESC, id DESC LIMIT ?", (*args, limit)).fetchall()
    return [dict(r) for r in rows]


def predictions(
    conn: sqlite3.Connection,
    site: str,
    device: str | None = None,
    since: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The newest ``limit`` predictions of a site (of ``device``, whose window ended at or
    after ``since``), oldest first; ``outputs`` as ``{name: {value, unit}}``."""
    where, args = ["site = ?", "kind = 'prediction'"], [site]
    if device is not None:
        where.append("device = ?")
        args.append(device)
    if since is not None:
        where.append("json_extract(payload, '$.window_end') >= ?")
        args.append(since)  # type: ignore[arg-type]
    sql = (
        "SELECT device, json_extract(payload, '$.window_end') AS window_end, "
        "json_extract(payload, '$.model_version') AS model_version, "
        "json_extract(payload, '$.task') AS task, json_extract(payload, '$.outputs') AS outputs, "
        "ts, received_at, historical, seq, epoch FROM messages "
        f"WHERE {' AND '.join(where)} ORDER BY window_end DESC, ts DESC LIMIT ?"
    )
    rows = conn.execute(sql, (*args, limit)).fetchall()
    out = []
    for r in reversed(rows):
        row = dict(r)
        row["outputs"] = json.loads(row["outputs"] or "{}")
        row["historical"] = bool(row["historical"])
        out.append(row)
    return out


def alarms(conn: sqlite3.Connection, active: bool = False) -> list[dict[str, Any]]:
    """Every alarm's current state (only the active ones with ``active``), the most
    recently changed first; empty on a database serve has not migrated yet."""
    sql = (
        "SELECT id, site, device, alarm_id, state, severity, rule, value, model_version, "
        "since, ts, updated_at, acked_by, acked_at FROM alarms"
    )
    if active:
        sql += " WHERE state = 'active'"
    try:
        rows = conn.execute(sql + " ORDER BY updated_at DESC, id DESC").fetchall()
    except sqlite3.OperationalError:  # no alarms table: nothing to show
        return []
    return [dict(r) for r in rows]


def active_alarm_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """The number of active alarms of each site that has any (the fleet's column)."""
    try:
        rows = conn.execute(
            "SELECT site, count(*) FROM alarms WHERE state = 'active' GROUP BY site"
        ).fetchall()
    except sqlite3.OperationalError:  # no alarms table yet
        return {}
    return {str(r[0]): int(r[1]) for r in rows}


def alarm_mark(conn: sqlite3.Connection) -> tuple[Any, ...]:
    """A cheap signature of the alarms table: it changes when an alarm is raised, changes
    state or is acknowledged (the dashboard hub then reads :func:`alarms_by_id`)."""
    try:
        row = conn.execute(
            "SELECT count(*), max(updated_at), max(acked_at), sum(state = 'active'), "
            "sum(acked_at IS NOT NULL), total(acked_at) FROM alarms"
        ).fetchone()
    except sqlite3.OperationalError:
        return ()
    return tuple(row)


def alarms_by_id(conn: sqlite3.Connection) -> dict[int, dict[str, Any]]:
    """Every alarm's current row by its ``id``."""
    return {int(a["id"]): a for a in alarms(conn)}


def dead_letters(
    conn: sqlite3.Connection, reason: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The newest ``limit`` dead letters, newest first."""
    sql = "SELECT id, received_at, topic, reason, detail, size, payload FROM dead_letters"
    args: tuple[Any, ...] = ()
    if reason is not None:
        sql += " WHERE reason = ?"
        args = (reason,)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    return [dict(r) for r in rows]


def telemetry_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Telemetry samples stored per site."""
    rows = conn.execute("SELECT site, count(*) FROM telemetry GROUP BY site").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def registrations(conn: sqlite3.Connection) -> dict[str, Registration]:
    """Every registered site's registration as the wire model, by site id.

    Imports pydantic (~0.3 s), so the quick read commands use :func:`sites` instead. A
    stored registration was validated when it arrived; one that no longer validates (an
    older schema) is left out rather than failing every reader.
    """
    rows = conn.execute(
        "SELECT site, registration FROM sites WHERE registration IS NOT NULL ORDER BY site"
    )
    out: dict[str, Registration] = {}
    for site, raw in rows.fetchall():
        if (reg := _registration(raw)) is not None:
            out[str(site)] = reg
    return out


def registration(conn: sqlite3.Connection, site: str) -> Registration | None:
    """One site's registration as the wire model; None when it has none (or an invalid
    one, as in :func:`registrations`)."""
    row = conn.execute("SELECT registration FROM sites WHERE site = ?", (site,)).fetchone()
    return None if row is None else _registration(row[0])


def _registration(raw: str | bytes | None) -> Registration | None:
    from pydantic import ValidationError

    from schemas import Registration

    if not raw:
        return None
    try:
        return Registration.model_validate_json(raw)
    except ValidationError:
        return None


class StoreReader(Protocol):
    """What the read commands need from storage (see tests/test_store_reader.py)."""

    def coordinator_info(self, now: int | None = None) -> dict[str, Any]: ...
    def sites(
        self, state: str | None = None, now: int | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...
    def site_detail(self, site: str, events_limit: int = 20) -> dict[str, Any] | None: ...
    def telemetry(
        self,
        site: str,
        device: str | None = None,
        sensor: str | None = None,
        since: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...
    def events(self, site: str | None = None, limit: int = 50) -> list[dict[str, Any]]: ...
    def dead_letters(self, reason: str | None = None, limit: int = 50) -> list[dict[str, Any]]: ...
    def predictions(
        self,
        site: str,
        device: str | None = None,
        since: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...
    def alarms(self, active: bool = False) -> list[dict[str, Any]]: ...
    def telemetry_counts(self) -> dict[str, int]: ...
    def registrations(self) -> dict[str, Registration]: ...
    # The training tables (runs, rounds, jobs, models).
    def runs(self, limit: int = 50) -> list[dict[str, Any]]: ...
    def run_detail(self, run_id: str) -> dict[str, Any] | None: ...
    def jobs(self, run_id: str | None = None, state: str | None = None) -> list[dict[str, Any]]: ...
    def models(self, run_id: str | None = None) -> list[dict[str, Any]]: ...
    def model_blob(self, model_id: str) -> bytes | None: ...
    def api_url(self) -> str | None: ...
    # Deployments (coordinator/store/deployments.py).
    def deployments(
        self, site: str | None = None, all_history: bool = False
    ) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class SqliteReader:
    """:class:`StoreReader` on one SQLite file, opened read-only."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path | str) -> SqliteReader:
        """Raises DatabaseMissing or NotAFedmqDatabase (see :func:`open_fedmq_db`)."""
        return cls(open_fedmq_db(path))

    def coordinator_info(self, now: int | None = None) -> dict[str, Any]:
        return coordinator_info(self._conn, now)

    def sites(
        self, state: str | None = None, now: int | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rows, info = sites(self._conn, state, now)
        return rows, info

    def site_detail(self, site: str, events_limit: int = 20) -> dict[str, Any] | None:
        detail: dict[str, Any] | None = site_detail(self._conn, site, events_limit)
        return detail

    def telemetry(
        self,
        site: str,
        device: str | None = None,
        sensor: str | None = None,
        since: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        return telemetry(self._conn, site, device, sensor, since, limit)

    def events(self, site: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return events(self._conn, site, limit)

    def dead_letters(self, reason: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return dead_letters(self._conn, reason, limit)

    def predictions(
        self,
        site: str,
        device: str | None = None,
        since: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        return predictions(self._conn, site, device, since, limit)

    def alarms(self, active: bool = False) -> list[dict[str, Any]]:
        return alarms(self._conn, active)

    def telemetry_counts(self) -> dict[str, int]:
        return telemetry_counts(self._conn)

    def registrations(self) -> dict[str, Registration]:
        return registrations(self._conn)

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        from coordinator.store import training_read

        return training_read.runs(self._conn, limit)

    def run_detail(self, run_id: str) -> dict[str, Any] | None:
        from coordinator.store import training_read

        return training_read.run_detail(self._conn, run_id)

    def jobs(self, run_id: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        from coordinator.store import training_read

        return training_read.jobs(self._conn, run_id, state)

    def models(self, run_id: str | None = None) -> list[dict[str, Any]]:
        from coordinator.store import training_read

        return training_read.models(self._conn, run_id)

    def model_blob(self, model_id: str) -> bytes | None:
        """The model's npz bytes, sha256-verified (ValueError if they fail the check)."""
        from coordinator.store import training_read

        return training_read.model_blob(self._conn, model_id)

    def api_url(self) -> str | None:
        """The control API URL the database's ``fedmq serve`` announced, if any."""
        from coordinator.store import training_read

        return training_read.api_url(self._conn)

    def deployments(
        self, site: str | None = None, all_history: bool = False
    ) -> list[dict[str, Any]]:
        """Per site the active version and the latest deployment (``fedmq deployments``),
        or with ``all_history`` every deployment sent to each site."""
        from coordinator.store import deployments

        return deployments.deployment_view(self._conn, site, all_history)

    def close(self) -> None:
        self._conn.close()


class PostgresReader(SqliteReader):
    """The training part of :class:`StoreReader` on PostgreSQL (``fedmq runs``, ``run``,
    ``jobs``, ``models``): the same queries, through
    :class:`coordinator.store.pg_compat.CompatConnection`. The other read commands read
    SQLite only in this release (their CLI refuses a PostgreSQL URL)."""

    @classmethod
    def open(cls, path: Path | str) -> PostgresReader:
        """Raises DatabaseMissing when the server cannot be reached or the database does
        not exist (psycopg imported here: only for a PostgreSQL URL)."""
        import psycopg

        from coordinator.store.pg_compat import connect

        try:
            return cls(connect(str(path)))  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise DatabaseMissing(str(exc).strip()) from None


# The dashboard's queries (coordinator/web): cheap enough to run every second while the
# daemon ingests (each reads an index or the newest rows only).


def fleet(conn: sqlite3.Connection, now: int | None = None) -> Any:
    """Every site as the fleet page shows it: :func:`sites`'s summary plus the
    registered location (``lat``/``lon``, None when not registered), hierarchy, the last
    heartbeat's health, and the coordinator's acked seq against the site's reported one."""
    now = now_ms() if now is None else now
    info = coordinator_info(conn, now)
    out = []
    for row in conn.execute("SELECT * FROM sites ORDER BY site").fetchall():
        s = _summary(row, info["patience"], now)
        reg: dict[str, Any] = json.loads(row["registration"]) if row["registration"] else {}
        loc = reg.get("location") or {}
        s.update(
            lat=loc.get("lat"), lon=loc.get("lon"),
            hierarchy={k: v for k, v in (reg.get("hierarchy") or {}).items() if v},
            cpu_percent=row["cpu_percent"], mem_percent=row["mem_percent"],
            disk_percent=row["disk_percent"], jobs_running=row["jobs_running"],
            last_acked_reported=row["last_acked_reported"],
            ack_lag=max((row["acked"] or 0) - (row["last_acked_reported"] or 0), 0),
            interval_s=row["interval_s"],
        )  # fmt: skip
        out.append(s)
    return out, info


def heartbeat_series(
    conn: sqlite3.Connection, sites: list[str], since: int
) -> dict[str, list[list[Any]]]:
    """Per site, its heartbeats received since ``since`` (ms), oldest first, as rows
    ``[received_at, cpu, mem, disk, outbox_depth, last_acked]`` (the sparklines)."""
    out: dict[str, list[list[Any]]] = {s: [] for s in sites}
    for i in range(0, len(sites), 500):  # SQLite's bound on host parameters
        chunk = sites[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            "SELECT site, received_at, cpu_percent, mem_percent, disk_percent, outbox_depth, "
            f"last_acked FROM heartbeats WHERE site IN ({marks}) AND received_at >= ? "
            "ORDER BY site, received_at",
            (*chunk, since),
        ).fetchall()
        for r in rows:
            out[r[0]].append(list(r[1:]))
    return out


def site_sensors(conn: sqlite3.Connection, site: str) -> list[dict[str, Any]]:
    """The (device, sensor) pairs of a site: registered ones, and any seen among its newest
    2,000 samples (a site may publish a sensor it did not register)."""
    found: dict[tuple[str, str], str] = {}
    row = conn.execute("SELECT registration FROM sites WHERE site = ?", (site,)).fetchone()
    if row is not None and row[0]:
        for dev in json.loads(row[0]).get("telemetry") or ():
            for sensor in dev.get("sensors") or ():
                found[(dev["device"], sensor["name"])] = sensor.get("unit") or ""
    for r in conn.execute(
        "SELECT DISTINCT device, name, unit FROM (SELECT device, name, unit FROM telemetry "
        "WHERE site = ? ORDER BY ts DESC LIMIT 2000)",
        (site,),
    ).fetchall():
        found.setdefault((r[0], r[1]), r[2] or "")
    return [{"device": d, "sensor": n, "unit": u} for (d, n), u in sorted(found.items())]


def telemetry_window(
    conn: sqlite3.Connection,
    site: str,
    device: str,
    sensor: str,
    since: int,
    until: int | None = None,
    limit: int = 20_000,
) -> list[list[Any]]:
    """``[ts, value]`` of one sensor between ``since`` and ``until`` (ms), oldest first;
    the newest ``limit`` when there are more."""
    until = now_ms() + 86_400_000 if until is None else until
    rows = conn.execute(
        "SELECT ts, value FROM telemetry WHERE site = ? AND ts >= ? AND ts <= ? "
        "AND device = ? AND name = ? ORDER BY ts DESC LIMIT ?",
        (site, since, until, device, sensor, limit),
    ).fetchall()
    return [[r[0], r[1]] for r in reversed(rows)]


def high_water(conn: sqlite3.Connection) -> dict[str, int]:
    """The newest rowid of the growing tables (each an O(log n) lookup): rates and what
    is new since the last look, without counting rows."""
    out = {}
    for table in ("messages", "telemetry", "site_events", "dead_letters", "heartbeats"):
        out[table] = int(conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0)
    return out


def samples_after(
    conn: sqlite3.Connection, rowid: int, sites: list[str], limit: int = 5_000
) -> tuple[list[dict[str, Any]], int]:
    """Telemetry rows stored after ``rowid`` for ``sites`` (the charts on screen), and the
    rowid to continue from. Reads the rowid range only (the newest rows)."""
    rows = conn.execute(
        "SELECT rowid, site, device, name, ts, value FROM telemetry WHERE rowid > ? "
        "ORDER BY rowid LIMIT ?",
        (rowid, limit),
    ).fetchall()
    wanted = set(sites)
    out = [
        {"site": r[1], "device": r[2], "sensor": r[3], "ts": r[4], "value": r[5]}
        for r in rows
        if r[1] in wanted
    ]
    return out, (int(rows[-1][0]) if rows else rowid)


def events_after(conn: sqlite3.Connection, rowid: int, limit: int = 500) -> list[dict[str, Any]]:
    """Site events stored after ``rowid`` (its ``id``), oldest first."""
    rows = conn.execute(
        "SELECT id, site, at, event, state_from, state_to, reason, session FROM site_events "
        "WHERE id > ? ORDER BY id LIMIT ?",
        (rowid, limit),
    ).fetchall()
    return [dict(r) for r in rows]


def dead_letter_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Dead letters stored per reason."""
    rows = conn.execute("SELECT reason, count(*) FROM dead_letters GROUP BY reason").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def event_counts(conn: sqlite3.Connection, site: str | None = None) -> dict[str, int]:
    """Site events stored per kind (of one site, or all)."""
    sql, args = "SELECT event, count(*) FROM site_events", ()
    if site is not None:
        sql, args = sql + " WHERE site = ?", (site,)  # type: ignore[assignment]
    rows = conn.execute(sql + " GROUP BY event", args).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def dead_letters_page(
    conn: sqlite3.Connection, reason: str | None = None, site: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest dead letters (newest first) with a payload preview (first 300
    characters) and the site parsed from the topic (``.../site/{id}/...``) when any."""
    sql = (
        "SELECT id, received_at, topic, reason, detail, size, substr(payload, 1, 300) AS "
        "preview FROM dead_letters"
    )
    where, args = [], []
    if reason is not None:
        where.append("reason = ?")
        args.append(reason)
    if site is not None:
        where.append("topic LIKE ?")
        args.append(f"%/site/{site}/%")
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    out = []
    for r in rows:
        d = dict(r)
        parts = (d["topic"] or "").split("/")
        d["site"] = parts[parts.index("site") + 1] if "site" in parts[:-1] else None
        out.append(d)
    return out


def round_timings(conn: sqlite3.Connection, limit: int = 500) -> list[dict[str, Any]]:
    """The newest closed rounds' ``run_id``, ``round``, ``state`` and ``wall_s`` (seconds
    from start to close); empty when no run ever ran on this database."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'rounds'").fetchone() is None:
        return []
    rows = conn.execute(
        "SELECT run_id, round, state, started_at, closed_at, wall_s FROM rounds "
        "WHERE closed_at IS NOT NULL ORDER BY closed_at DESC LIMIT ?",
        (limit,),
    ).fetchall()
    out = []
    for r in rows:
        wall = r["wall_s"]
        if wall is None and r["started_at"] and r["closed_at"]:
            wall = (r["closed_at"] - r["started_at"]) / 1000
        out.append(
            {"run_id": r["run_id"], "round": r["round"], "state": r["state"], "wall_s": wall}
        )
    return out


def rounds_high_water(conn: sqlite3.Connection) -> tuple[int, int]:
    """(rows, newest change) of the rounds table: changes when a round opens or closes."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'rounds'").fetchone() is None:
        return (0, 0)
    row = conn.execute(
        "SELECT count(*), max(max(coalesce(started_at, 0)), max(coalesce(closed_at, 0))) "
        "FROM rounds"
    ).fetchone()
    return (int(row[0] or 0), int(row[1] or 0))


def site_states(conn: sqlite3.Connection, now: int | None = None) -> list[dict[str, Any]]:
    """Every site's state computed now, as :func:`sites` does, without reading the
    registrations (the dashboard's poll runs this every half second)."""
    now = now_ms() if now is None else now
    patience = coordinator_info(conn, now)["patience"]
    out = []
    for r in conn.execute(
        "SELECT site, status, last_alive, interval_s, last_seen, outbox_depth, conflict_at, "
        "conflict_reason FROM sites"
    ).fetchall():
        state, reason = evaluate(r[1], r[2] or 0, r[3] or 10.0, patience, now)
        if r[6] and now - r[6] <= CONFLICT_WINDOW_MS:
            state, reason = "conflict", r[7] or "two streams interleave"
        out.append(
            {"site": r[0], "state": state, "reason": reason, "last_seen": r[4],
             "outbox_depth": r[5]}
        )  # fmt: skip
    return out
