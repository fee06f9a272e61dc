"""The round driver's feed: the writer hands each job message it stored to the training
service right after its commit (visible to another connection by then), once; telemetry
and replays are not handed over. Then the service routes them to every run it drives."""

from __future__ import annotations

import queue
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from coordinator.bus import Inbound
from coordinator.ingest.ingestor import Ingestor
from coordinator.settings import CoordinatorSettings
from coordinator.store import SqliteStore
from coordinator.training.service import TrainService
from fedmq_runtime.settings import MqttSettings
from schemas import JobStatus, Sample, TelemetryBatch, Topics, encode

P = "ut/fedmq/v1"
T = Topics(P)


@pytest.mark.parametrize("writer_process", [False, True], ids=["in-process", "writer-process"])
def test_job_messages_are_handed_over_after_the_commit_once(
    tmp_path: Path, writer_process: bool
) -> None:
    db = tmp_path / "c.db"
    store = SqliteStore(db)
    cfg = CoordinatorSettings(mqtt=MqttSettings(prefix=P), writer_process=writer_process)
    ing = Ingestor(store, cfg, 1, lambda *_: None, lambda *_: None, queue.SimpleQueue())
    handed: list[tuple[list[Any], int]] = []
    other = sqlite3.connect(db)

    def on_jobs(rows: list[Any]) -> None:  # what a reader sees at that moment
        n = other.execute("SELECT count(*) FROM messages WHERE job_id IS NOT NULL").fetchone()
        handed.append((rows, int(n[0])))

    ing.on_job_messages = on_jobs
    status = JobStatus(site="a", session=1, seq=1, job_id="j1", run_id="r", round=1,
                       state="running")  # fmt: skip
    batch = TelemetryBatch(site="a", session=1, seq=2, device="d",
                           samples=(Sample(ts=1, name="x", value=1.0),))  # fmt: skip
    try:
        ing.process([
            Inbound(T.job_status("a", "j1"), encode(status), 1, 1, False, 1000),
            Inbound(T.telemetry("a", "d"), encode(batch), 2, 1, False, 1000),
        ])  # fmt: skip
        assert len(handed) == 1
        rows, committed = handed[0]
        assert committed == 1  # already committed when handed over
        assert [(r.site, r.kind, r.job_id) for r in rows] == [("a", "job_status", "j1")]
        ing.process([Inbound(T.job_status("a", "j1"), encode(status), 3, 1, False, 1001)])
        assert len(handed) == 1  # a replay is stored once and handed over once
    finally:
        other.close()
        if ing.writer is not None:
            ing.writer.stop()
        store.close()


def test_the_service_feeds_every_run_it_drives_and_none_that_ended() -> None:
    from coordinator.store import DurableRow
    from coordinator.training.driver import Link
    from coordinator.training.service import RunHandle

    service = TrainService(None, None, 1)
    live, ended = RunHandle("run-1", Link(None, None)), RunHandle("run-2", Link(None, None))
    ended.error = ("over", "failed")
    service.runs = {"run-1": live, "run-2": ended}
    row = DurableRow("a", 1, "job_status", 1, 1, 1, False, None, "j1", (), "{}", "e")
    service.on_job_messages([row])
    assert live.link.feed.get_nowait() == [
        {"site": "a", "kind": "job_status", "job_id": "j1", "payload": "{}"}
    ]
    assert ended.link.feed.empty()


def test_a_driver_transaction_commits_its_rows_together_or_not_at_all(tmp_path: Path) -> None:
    from coordinator.store.training import TrainDb

    db = TrainDb(tmp_path / "t.db")
    other = sqlite3.connect(tmp_path / "t.db")

    def seen() -> list[str]:
        return [r[0] for r in other.execute("SELECT job_id FROM train_jobs ORDER BY job_id")]

    db.put_job({"job_id": "j0", "run_id": "r", "round": 1, "site": "a", "state": "sent"})
    assert seen() == ["j0"]  # outside a transaction every write commits
    with db.transaction():
        db.put_job({"job_id": "j1", "run_id": "r", "round": 1, "site": "b", "state": "sent"})
        with db.transaction():  # nested: the outermost commits
            db.put_round("r", 1, state="open", selected=["a", "b"])
        assert seen() == ["j0"]  # not visible to another connection yet
    assert seen() == ["j0", "j1"]
    assert other.execute("SELECT state FROM rounds").fetchone() == ("open",)
    with pytest.raises(RuntimeError), db.transaction():
        db.put_job({"job_id": "j2", "run_id": "r", "round": 1, "site": "c", "state": "sent"})
        raise RuntimeError("crash before the commit")
    assert seen() == ["j0", "j1"]  # rolled back: none of the block's rows
    db.put_job({"job_id": "j3", "run_id": "r", "round": 1, "site": "d", "state": "sent"})
    assert seen() == ["j0", "j1", "j3"]  # and writes commit one by one again


def test_a_job_message_ends_the_batch_wait_so_the_driver_gets_it_at_once(tmp_path: Path) -> None:
    import threading

    from tests.helpers.wait import wait_for

    store = SqliteStore(tmp_path / "c.db")
    # A batch lingers up to batch_time_s for more telemetry; a job message must not.
    cfg = CoordinatorSettings(mqtt=MqttSettings(prefix=P), writer_process=False,
                              batch_time_s=60.0)  # fmt: skip
    ing = Ingestor(store, cfg, 1, lambda *_: None, lambda *_: None, queue.SimpleQueue())
    handed: list[list[Any]] = []
    ing.on_job_messages = handed.append
    batch = TelemetryBatch(site="a", session=1, seq=1, device="d",
                           samples=(Sample(ts=1, name="x", value=1.0),))  # fmt: skip
    status = JobStatus(site="a", session=1, seq=2, job_id="j1", run_id="r", round=1,
                       state="done")  # fmt: skip
    try:
        ing.inbound.put(Inbound(T.telemetry("a", "d"), encode(batch), 1, 1, False, 1000))
        worker = threading.Thread(target=ing._batch, daemon=True)
        worker.start()
        wait_for(ing.inbound.empty, 10, "the batch took the telemetry")  # now lingering
        ing.inbound.put(Inbound(T.job_status("a", "j1"), encode(status), 2, 1, False, 1001))
        wait_for(lambda: handed, 20, "the job status handed over (not after 60 s)")
        worker.join(20)
        assert not worker.is_alive()
        assert [(r.kind, r.job_id) for r in handed[0]] == [("job_status", "j1")]
        assert store.conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 2
    finally:
        if ing.writer is not None:
            ing.writer.stop()
        store.close()
