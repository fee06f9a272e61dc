"""The training tables (runs, rounds, train_jobs, models; federated evaluation in
eval_sites and eval_rounds; a server optimizer's strategy_state) and the round driver's
writes, in SQLite or PostgreSQL (the same ``--db`` as serve's store: a file or a
``postgresql://`` URL).

``fedmq serve``'s round-driver threads own these tables, each with its own connection; the
writer thread owns the rest of the database and stores what sites send (job statuses,
results, chunks) in ``messages``, handing each new one to the driver in memory after its
commit. Both write the same WAL database: every write here is a short transaction, and
the connection waits up to 30 s for the other writer. ``runs.last_rowid`` is no longer
used (results are not polled any more); the column stays for older databases.

Migrations are named ``train_...`` and idempotent (``if_not_exists``), so whichever process
opens the database first creates the tables, and a race between two is harmless.

On PostgreSQL the same class runs the same SQL through
:class:`coordinator.store.pg_compat.CompatConnection` (``?`` placeholders, ``sqlite3.Row``-like
rows, ``with conn:`` transactions); the migrations go through
:func:`coordinator.store.postgres.apply_pg_migrations` (types translated, an advisory lock
for concurrent first starts). The one dialect difference in the queries is the order of
stored job messages (SQLite's ``rowid``; PostgreSQL has none: arrival time, then per site
its sequence numbers). psycopg is imported only for a PostgreSQL URL.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from coordinator.store.migrations import MIGRATIONS, Migration, apply_migrations
from coordinator.store.urls import is_postgres_url
from fedmq_runtime.clock import now_ms

# now_ms: re-exported from fedmq_runtime.clock for the training modules that import it here.
__all__ = ["TRAIN_MIGRATIONS", "JobRow", "TrainDb", "TrainDbError", "now_ms"]

JOB_KINDS = ("job_status", "job_result", "result_chunk")


def _m0001_tables(db: Any) -> None:
    db["runs"].create(
        {
            "run_id": str, "task": str, "code_hash": str, "strategy": str, "rounds": int,
            "min_sites": int, "round_timeout_s": float, "sites": str, "hyperparams": str,
            "spec": str, "state": str, "reason": str, "created_at": int, "finished_at": int,
            "last_rowid": int,
        },
        pk="run_id", if_not_exists=True,
    )  # fmt: skip
    db["rounds"].create(
        {
            "run_id": str, "round": int, "state": str, "started_at": int, "closed_at": int,
            "selected": str, "n_results": int, "reason": str, "model_id": str, "metrics": str,
            "test_rmse": float, "job_time_max_s": float, "wall_s": float,
        },
        pk=("run_id", "round"), if_not_exists=True,
    )  # fmt: skip
    db["train_jobs"].create(
        {
            "job_id": str, "run_id": str, "round": int, "site": str, "state": str,
            "progress": float, "reason": str, "n_samples": int, "metrics": str,
            "train_time_s": float, "late": int, "updated_at": int, "created_at": int,
            "status_seq": int,
        },
        pk="job_id", if_not_exists=True,
    )  # fmt: skip
    db["models"].create(
        {
            "model_id": str, "run_id": str, "round": int, "task": str, "created_at": int,
            "sha256": str, "size": int, "n_sites": int, "n_samples": int, "metrics": str,
            "test_rmse": float, "weights": bytes,
        },
        pk="model_id", if_not_exists=True,
    )  # fmt: skip
    db.execute("CREATE INDEX IF NOT EXISTS train_jobs_run ON train_jobs (run_id, round)")
    db.execute("CREATE INDEX IF NOT EXISTS models_run ON models (run_id, round)")
    # Partial: telemetry rows (job_id NULL) never touch it, so ingest pays nothing for it;
    # `fedmq jobs` finds every site-reported job through it.
    db.execute(
        "CREATE INDEX IF NOT EXISTS messages_job_id ON messages (job_id, site, seq) "
        "WHERE job_id IS NOT NULL"
    )


def _m0002_run_aggregate(db: Any) -> None:
    # How a run combines its results (fedavg | median | trimmed-mean); older runs: fedavg.
    # The columns from a query's description: portable (no PRAGMA on PostgreSQL).
    cols = {c[0] for c in db.execute("SELECT * FROM runs LIMIT 0").description}
    if "aggregate" not in cols:
        db.execute("ALTER TABLE runs ADD COLUMN aggregate TEXT NOT NULL DEFAULT 'fedavg'")


# Federated evaluation and the server optimizer's state (plain DDL).
#   eval_sites: what each site reported for a global model (model_id), measured by its job
#     of round ``round`` (the next training round, or the final evaluation round
#     rounds + 1): a value, or NULL with the reason in ``missing``; metric '*' holds a
#     reason that covers the site's whole evaluation (none reported, failed, excluded).
#   eval_rounds: per model and metric, the sample-weighted value over the covering sites
#     (``sites`` of ``of_sites`` asked; ``weighting`` 'samples', or 'sites' when a covering
#     site did not say how many samples it scored).
#   strategy_state: a server optimizer's moments after each aggregated round (npz).
_M0003_FEDERATED_EVAL = """
CREATE TABLE IF NOT EXISTS eval_sites (
   run_id TEXT NOT NULL, model_id TEXT NOT NULL, round INTEGER NOT NULL,
   site TEXT NOT NULL, job_id TEXT, metric TEXT NOT NULL, value REAL, missing TEXT,
   n_samples INTEGER, created_at INTEGER,
   PRIMARY KEY (run_id, model_id, site, metric)
);
CREATE TABLE IF NOT EXISTS eval_rounds (
   run_id TEXT NOT NULL, model_id TEXT NOT NULL, round INTEGER NOT NULL,
   final INTEGER NOT NULL DEFAULT 0, metric TEXT NOT NULL, value REAL,
   sites INTEGER NOT NULL, of_sites INTEGER NOT NULL, n_samples INTEGER,
   weighting TEXT, created_at INTEGER,
   PRIMARY KEY (run_id, model_id, metric)
);
CREATE TABLE IF NOT EXISTS strategy_state (
   run_id TEXT NOT NULL, round INTEGER NOT NULL, strategy TEXT NOT NULL,
   state BLOB NOT NULL, created_at INTEGER,
   PRIMARY KEY (run_id, round)
)
"""

TRAIN_MIGRATIONS: tuple[Migration, ...] = (
    Migration("train_0001_tables", _m0001_tables),
    Migration("train_0002_run_aggregate", _m0002_run_aggregate),
    Migration("train_0003_federated_eval", _M0003_FEDERATED_EVAL),
)


def apply_train_migrations(conn: sqlite3.Connection) -> None:
    """Core and training migrations; a concurrent first start may race us once: retry."""
    for attempt in range(3):
        try:
            apply_migrations(conn, (*MIGRATIONS, *TRAIN_MIGRATIONS))
            return
        except sqlite3.DatabaseError:
            if conn.in_transaction:
                conn.rollback()
            if attempt == 2:
                raise
            time.sleep(0.2)


JobRow = dict[str, Any]

# Stored job messages in the order they were stored (``job_messages``).
_STORED_ORDER = {"sqlite": "rowid", "postgres": "received_at, site, epoch, seq"}


class TrainDbError(RuntimeError):
    """The training tables cannot be opened (server unreachable, missing extra, ...)."""


class TrainDb:
    """A round driver's connection (one thread); every method commits, except inside
    :meth:`transaction`, which commits everything written in it at once.

    ``db``: a SQLite file, or a ``postgresql://`` URL (as ``fedmq serve --db``).
    """

    def __init__(self, db: Path | str) -> None:
        self._depth = 0  # open transaction() blocks
        self.conn: Any
        if is_postgres_url(db):
            self.path: Path | str = str(db)
            self.dialect = "postgres"
            self.conn = _connect_postgres(str(db))
        else:
            self.path = Path(db)
            self.dialect = "sqlite"
            self.conn = sqlite3.connect(str(self.path), timeout=30)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            apply_train_migrations(self.conn)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The writes in the block commit together (one fsync instead of one per row; all
        or none after a crash); blocks nest, the outermost commits."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            with self.conn:  # commits at the end, rolls back on an exception
                yield
        finally:
            self._depth = 0

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        if self._depth:
            yield  # the enclosing transaction() commits
        else:
            with self.conn:
                yield

    def _upsert(self, table: str, row: dict[str, Any], pk: Iterable[str]) -> None:
        cols = list(row)
        keys = list(pk)
        sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in keys)
        sql = (
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
        )
        with self._write():
            self.conn.execute(sql, [_cell(row[c]) for c in cols])

    # Runs ---------------------------------------------------------------------------

    def put_run(self, row: dict[str, Any]) -> None:
        self._upsert("runs", row, ["run_id"])

    def update_run(self, run_id: str, **fields: Any) -> None:
        self._upsert("runs", {"run_id": run_id, **fields}, ["run_id"])

    def run(self, run_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else dict(row)

    # Rounds -------------------------------------------------------------------------

    def put_round(self, run_id: str, rnd: int, **fields: Any) -> None:
        self._upsert("rounds", {"run_id": run_id, "round": rnd, **fields}, ["run_id", "round"])

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM rounds WHERE run_id = ? ORDER BY round", (run_id,)
        ).fetchall()
        return [dict(r) for r in rows]

    # Jobs ---------------------------------------------------------------------------

    def put_job(self, row: JobRow) -> None:
        self._upsert("train_jobs", {**row, "updated_at": now_ms()}, ["job_id"])

    def jobs(self, run_id: str) -> list[JobRow]:
        rows = self.conn.execute(
            "SELECT * FROM train_jobs WHERE run_id = ? ORDER BY round, site", (run_id,)
        ).fetchall()
        return [dict(r) for r in rows]

    # Models -------------------------------------------------------------------------

    def put_model(self, row: dict[str, Any]) -> None:
        self._upsert("models", row, ["model_id"])

    def model_weights(self, model_id: str) -> bytes | None:
        row = self.conn.execute(
            "SELECT weights FROM models WHERE model_id = ?", (model_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    # Federated evaluation -------------------------------------------------------------

    def put_evaluation(
        self,
        run_id: str,
        model_id: str,
        rnd: int,
        sites: Iterable[dict[str, Any]],
        summary: Iterable[dict[str, Any]],
        final: bool = False,
    ) -> None:
        """One global model's evaluation, in one transaction: per site and metric
        (``site, job_id, metric, value, missing, n_samples``) and weighted per metric
        (``metric, value, sites, of_sites, n_samples, weighting``). A later evaluation of
        the same model (a round restarted after a resume) replaces the earlier one."""
        at = now_ms()
        with self._write():
            self.conn.execute(
                "DELETE FROM eval_sites WHERE run_id = ? AND model_id = ?", (run_id, model_id)
            )
            self.conn.execute(
                "DELETE FROM eval_rounds WHERE run_id = ? AND model_id = ?", (run_id, model_id)
            )
            self.conn.executemany(
                "INSERT INTO eval_sites (run_id, model_id, round, site, job_id, metric, value, "
                "missing, n_samples, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, model_id, rnd, r["site"], r.get("job_id"), r["metric"],
                     r.get("value"), r.get("missing"), r.get("n_samples"), at)
                    for r in sites
                ],
            )  # fmt: skip
            self.conn.executemany(
                "INSERT INTO eval_rounds (run_id, model_id, round, final, metric, value, sites, "
                "of_sites, n_samples, weighting, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, model_id, rnd, int(final), r["metric"], r.get("value"),
                     r["sites"], r["of_sites"], r.get("n_samples"), r.get("weighting"), at)
                    for r in summary
                ],
            )  # fmt: skip

    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        """Weighted evaluation rows of a run (model, round, metric order)."""
        rows = self.conn.execute(
            "SELECT * FROM eval_rounds WHERE run_id = ? ORDER BY round, model_id, metric",
            (run_id,),
        ).fetchall()
        return [dict(r) for r in rows]

    # Server optimizer ---------------------------------------------------------------

    def put_strategy_state(self, run_id: str, rnd: int, strategy: str, state: bytes) -> None:
        self._upsert(
            "strategy_state",
            {"run_id": run_id, "round": rnd, "strategy": strategy, "state": state,
             "created_at": now_ms()},
            ["run_id", "round"],
        )  # fmt: skip

    def strategy_state(self, run_id: str, rnd: int) -> bytes | None:
        """The server optimizer's state after round ``rnd`` (None: none stored)."""
        row = self.conn.execute(
            "SELECT state FROM strategy_state WHERE run_id = ? AND round = ?", (run_id, rnd)
        ).fetchone()
        return None if row is None else bytes(row[0])

    # What serve stored --------------------------------------------------------------

    def job_messages(self, job_ids: Iterable[str]) -> list[Any]:
        """Every stored message of these jobs, in the order they were stored (resume)."""
        ids = list(job_ids)
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        return list(
            self.conn.execute(
                "SELECT site, seq, kind, job_id, payload FROM messages "
                f"WHERE job_id IN ({marks}) ORDER BY {_STORED_ORDER[self.dialect]}",
                ids,
            ).fetchall()
        )

    def running_runs(self) -> list[str]:
        """Runs stored as running: the daemon resumes them when it starts."""
        rows = self.conn.execute(
            "SELECT run_id FROM runs WHERE state = 'running' ORDER BY created_at"
        )
        return [str(r[0]) for r in rows.fetchall()]

    def set_api_url(self, url: str) -> None:
        """Where this database's daemon serves its control API (``fedmq train`` reads it)."""
        with self._write():
            self.conn.execute(
                "INSERT INTO meta (key, value) VALUES ('api_url', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (url,),
            )


def _connect_postgres(url: str) -> Any:
    """A :class:`~coordinator.store.pg_compat.CompatConnection` with every migration
    applied (core and training), or TrainDbError."""
    try:
        import psycopg

        from coordinator.store.pg_compat import connect
        from coordinator.store.postgres import apply_pg_migrations
    except ImportError as exc:
        from coordinator.store.open import POSTGRES_HINT

        raise TrainDbError(f"{POSTGRES_HINT} ({exc})") from None
    try:
        conn = connect(url)
    except psycopg.Error as exc:
        raise TrainDbError(f"cannot connect to PostgreSQL: {exc}") from None
    try:
        conn.raw.autocommit = False  # each migration with its record: one transaction
        apply_pg_migrations(conn.raw, (*MIGRATIONS, *TRAIN_MIGRATIONS))
        conn.raw.autocommit = True
    except BaseException:
        conn.close()
        raise
    return conn


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value
