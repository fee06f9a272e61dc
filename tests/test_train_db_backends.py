"""The round driver's store (``TrainDb``) on both backends: the same calls, the same
answers, on a SQLite file and on a real PostgreSQL (tests/helpers/postgres.py).

Covers every write and read the driver makes (runs, rounds, jobs, models, evaluations,
server-optimizer state), a transaction that fails and leaves nothing, the job messages
serve stored (read back in the order they were stored), the announced API URL, the live
sites offering a task (the read side's ``sites``/``registrations`` on the same
connection), and a second open of the same database (migrations applied once).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.store import DurableRow, SiteRecord
from coordinator.store.open import open_store
from coordinator.store.training import TRAIN_MIGRATIONS, TrainDb
from coordinator.store.training_read import api_url, evaluations, run_detail
from coordinator.training.select import offers, registered_rows
from fedmq_runtime.clock import now_ms
from schemas import Registration


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return tmp_path / "c.db"
    return request.getfixturevalue("pg_url")


@contextlib.contextmanager
def _serve_store(db: Any) -> Iterator[Any]:
    """serve's store on ``db`` (what the ingest writes), committed and closed after."""
    store = open_store(db, TRAIN_MIGRATIONS)
    try:
        yield store
        store.commit()
    finally:
        store.close()


def _run_row(run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id, "task": "toy", "code_hash": "c" * 64, "strategy": "fedavg",
        "aggregate": "fedavg", "rounds": 2, "min_sites": 1, "round_timeout_s": 30.0,
        "sites": ["a", "b"], "hyperparams": {"epochs": 1}, "spec": {"task": "toy"},
        "state": "running", "reason": "", "created_at": now_ms(), "finished_at": None,
        "last_rowid": 0,
    }  # fmt: skip


def test_every_driver_write_reads_back_the_same(db: Any) -> None:
    t = TrainDb(db)
    try:
        t.put_run(_run_row("run-1"))
        t.update_run("run-1", state="done", reason="ok", finished_at=5)
        run = t.run("run-1")
        assert run is not None
        assert (run["state"], run["reason"], run["finished_at"]) == ("done", "ok", 5)
        assert json.loads(run["sites"]) == ["a", "b"]
        assert t.run("nope") is None
        with t.transaction():
            t.put_round("run-1", 1, state="open", started_at=1, selected=["a", "b"])
            t.put_job({"job_id": "j1", "run_id": "run-1", "round": 1, "site": "a",
                       "state": "sent", "late": False, "created_at": 1})  # fmt: skip
            t.put_job({"job_id": "j2", "run_id": "run-1", "round": 1, "site": "b",
                       "state": "sent", "late": True, "created_at": 1})  # fmt: skip
        t.put_round("run-1", 1, state="aggregated", n_results=2, test_rmse=1.5, wall_s=0.25,
                    model_id="run-1-r1")  # fmt: skip
        assert [(r["round"], r["state"], r["n_results"], r["test_rmse"]) for r in
                t.rounds("run-1")] == [(1, "aggregated", 2, 1.5)]  # fmt: skip
        jobs = t.jobs("run-1")
        assert [(j["job_id"], j["site"], j["late"]) for j in jobs] == [
            ("j1", "a", 0),
            ("j2", "b", 1),
        ]
        weights = bytes(range(256)) * 40
        t.put_model({"model_id": "run-1-r1", "run_id": "run-1", "round": 1, "task": "toy",
                     "created_at": 1, "sha256": "x", "size": len(weights), "n_sites": 2,
                     "n_samples": 200, "metrics": {"loss": 0.5}, "test_rmse": 1.5,
                     "weights": weights})  # fmt: skip
        assert t.model_weights("run-1-r1") == weights
        assert t.model_weights("none") is None
        t.put_strategy_state("run-1", 1, "fedadam", b"\x00npz\xff")
        assert t.strategy_state("run-1", 1) == b"\x00npz\xff"
        assert t.strategy_state("run-1", 2) is None
        sites: list[dict[str, Any]] = [
            {"site": "a", "job_id": "j1", "metric": "rmse", "value": 2.0, "n_samples": 10},
            {"site": "b", "metric": "*", "missing": "failed"},
        ]
        summary = [{"metric": "rmse", "value": 2.0, "sites": 1, "of_sites": 2, "n_samples": 10,
                    "weighting": "samples"}]  # fmt: skip
        t.put_evaluation("run-1", "run-1-r1", 2, sites, summary, final=True)
        t.put_evaluation("run-1", "run-1-r1", 2, sites, summary, final=True)  # replaces
        assert [(e["metric"], e["value"], e["final"]) for e in t.evaluations("run-1")] == [
            ("rmse", 2.0, 1)
        ]
        (ev,) = evaluations(t.conn, "run-1")  # the read side, on the same connection
        assert ev["sites"]["b"]["error"] == "failed"
        assert ev["metrics"]["rmse"]["missing"] == {"b": "failed"}
        detail = run_detail(t.conn, "run-1")
        assert detail is not None and detail["final_evaluation"]["model_id"] == "run-1-r1"
    finally:
        t.close()


def test_a_failed_transaction_leaves_nothing(db: Any) -> None:
    t = TrainDb(db)
    try:
        t.put_run(_run_row("run-2"))
        with pytest.raises(RuntimeError, match="boom"), t.transaction():
            t.put_round("run-2", 1, state="open")
            with t.transaction():  # nested: the outer block decides
                t.put_job({"job_id": "jx", "run_id": "run-2", "round": 1, "site": "a"})
            raise RuntimeError("boom")
        assert t.rounds("run-2") == [] and t.jobs("run-2") == []
        t.put_round("run-2", 1, state="open")  # the connection goes on after it
        assert [r["state"] for r in t.rounds("run-2")] == ["open"]
        assert t.running_runs() == ["run-2"]
    finally:
        t.close()


def _message(site: str, seq: int, kind: str, job_id: str | None, at: int) -> DurableRow:
    payload = None if job_id is None else json.dumps({"seq": seq, "job_id": job_id})
    samples = [] if job_id else [("x", at, 1.0, "u", "good")]
    return DurableRow(site, seq, kind, 1, at, at, False, "d", job_id, samples, payload, "e1")


def test_job_messages_serve_stored_come_back_in_stored_order(db: Any) -> None:
    at = now_ms()
    with _serve_store(db) as store:
        store.add_messages([
            _message("b", 1, "job_status", "jb", at),
            _message("a", 1, "job_status", "ja", at + 1),
            _message("a", 2, "telemetry", None, at + 2),
            _message("a", 3, "job_result", "ja", at + 3),
            _message("a", 4, "job_status", "other", at + 4),
        ])  # fmt: skip
    t = TrainDb(db)
    try:
        rows = t.job_messages(["ja", "jb"])
        assert [(r["site"], r["seq"], r["kind"], r["job_id"]) for r in rows] == [
            ("b", 1, "job_status", "jb"), ("a", 1, "job_status", "ja"),
            ("a", 3, "job_result", "ja"),
        ]  # fmt: skip
        assert json.loads(rows[2]["payload"]) == {"seq": 3, "job_id": "ja"}
        assert t.job_messages([]) == []
    finally:
        t.close()


def test_api_url_announced_and_replaced(db: Any) -> None:
    t = TrainDb(db)
    try:
        assert api_url(t.conn) is None
        t.set_api_url("http://127.0.0.1:1")
        t.set_api_url("http://127.0.0.1:2")
        assert api_url(t.conn) == "http://127.0.0.1:2"
    finally:
        t.close()
    again = TrainDb(db)  # a second open: migrations already applied, nothing lost
    try:
        assert api_url(again.conn) == "http://127.0.0.1:2"
    finally:
        again.close()


def _registration(site: str, task: str, rows: int) -> str:
    return Registration.model_validate(
        {"site": site, "session": 1, "name": site, "approval_mode": "auto",
         "tasks": [{"name": task, "code_hash": "e" * 64}],
         "datasets": [{"name": "d", "description": f"{task} private rows", "rows": rows}]}
    ).model_dump_json()  # fmt: skip


def test_offers_read_live_sites_from_either_backend(db: Any) -> None:
    now = now_ms()
    with _serve_store(db) as store:
        store.save_sites([
            SiteRecord("a", _registration("a", "toy", 120), "online", 1, last_alive=now,
                       interval_s=60.0),
            SiteRecord("b", _registration("b", "other", 50), "online", 1, last_alive=now,
                       interval_s=60.0),
            SiteRecord("c", _registration("c", "toy", 7), "offline", 1, last_alive=now,
                       interval_s=60.0),
        ])  # fmt: skip
    t = TrainDb(db)
    try:
        found = offers(t.conn, "toy")
        assert [(o.site, o.code_hash) for o in found] == [("a", "e" * 64)]
        assert offers(t.conn, "toy", only=["b"]) == []
        assert registered_rows(t.conn, "a", "toy") == 120
        assert registered_rows(t.conn, "zz", "toy") is None
    finally:
        t.close()
