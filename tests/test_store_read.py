"""The store's read-only queries that replaced SQL in the CLI and the demo: a database
check with a one-line error, readiness, telemetry counts and registrations as models."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.store import DurableRow, SiteRecord, SqliteStore
from coordinator.store.read import (
    DatabaseMissing,
    NotAFedmqDatabase,
    is_ready,
    open_db,
    open_fedmq_db,
    registrations,
    telemetry_counts,
)
from schemas import Registration, encode
from tests.helpers.coord_proc import fedmq


def _tel(site: str, seq: int, n: int) -> DurableRow:
    samples = [(f"s{i}", 1000 + seq, 1.0, "C", "good") for i in range(n)]
    return DurableRow(site, seq, "telemetry", 1, 1000 + seq, 1, False, "d", None, samples, None)


def test_a_file_that_is_not_a_fedmq_database_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(NotAFedmqDatabase):
        open_fedmq_db(junk)
    with pytest.raises(DatabaseMissing):
        open_fedmq_db(tmp_path / "none.db")
    proc = fedmq("sites", "--db", str(junk), check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a fedmq database" in lines[0], proc.stderr


def test_ready_counts_and_registrations_as_models(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    db.write_bytes(b"")  # an empty file: SQLite opens it, no tables yet
    conn = open_db(db)
    assert is_ready(conn) is False
    conn.close()

    reg = Registration(site="a", session=1, seq=0, name="Press A", approval_mode="manual")
    store = SqliteStore(db)
    store.save_sites([SiteRecord("a", registration=encode(reg).decode()), SiteRecord("b")])
    store.add_messages([_tel("a", 1, 3), _tel("a", 2, 2), _tel("b", 1, 1)])
    store.commit()
    store.close()

    conn = open_fedmq_db(db)
    assert is_ready(conn) is True
    assert telemetry_counts(conn) == {"a": 5, "b": 1}
    got = registrations(conn)
    assert list(got) == ["a"]  # b never registered
    assert isinstance(got["a"], Registration) and got["a"] == reg
    conn.close()


def test_training_read_commands_go_through_the_reader(tmp_path: Path) -> None:
    import hashlib
    import json

    from coordinator.store.training import TrainDb

    db = tmp_path / "c.db"
    SqliteStore(db).close()
    train = TrainDb(db)
    train.put_run({"run_id": "r1", "task": "rul", "strategy": "fedavg", "rounds": 1,
                   "min_sites": 1, "sites": json.dumps(["a"]), "state": "done",
                   "created_at": 5})  # fmt: skip
    train.put_round("r1", 1, state="aggregated", test_rmse=12.5, model_id="r1-r1")
    weights = b"npz-bytes"
    train.put_model({"model_id": "r1-r1", "run_id": "r1", "round": 1, "task": "rul",
                     "created_at": 6, "sha256": hashlib.sha256(weights).hexdigest(),
                     "size": len(weights), "n_sites": 1, "n_samples": 9,
                     "weights": weights})  # fmt: skip
    train.close()

    [run] = json.loads(fedmq("runs", "--db", str(db), "--json").stdout)
    assert (run["run_id"], run["aggregated"], run["test_rmse"]) == ("r1", 1, 12.5)
    detail = json.loads(fedmq("run", "r1", "--db", str(db), "--json").stdout)
    assert [r["round"] for r in detail["rounds"]] == [1]
    assert fedmq("run", "nope", "--db", str(db), check=False).returncode == 3
    [model] = json.loads(fedmq("models", "--db", str(db), "--json").stdout)
    assert model["model_id"] == "r1-r1"
    out = tmp_path / "m.npz"
    fedmq("models", "export", "r1-r1", "--out", str(out), "--db", str(db))
    assert out.read_bytes() == weights
    assert json.loads(fedmq("jobs", "--db", str(db), "--json").stdout) == []
