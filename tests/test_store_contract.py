"""One contract for every Store implementation (parametrize ``IMPLEMENTATIONS`` to add one).

The suite talks to a store only through the :class:`Store` interface: no connection, no
SQL, no PRAGMAs, so a second implementation runs it unchanged. What only one
implementation promises (SQLite's durability settings) is tested in its own file
(``test_store_sqlite.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from coordinator.store import (
    AlarmRow,
    DeadLetterRow,
    DeploymentRow,
    DurableRow,
    EventRow,
    HeartbeatRow,
    Migration,
    SiteDeploymentRow,
    SiteRecord,
    SqliteStore,
    Store,
    StreamRow,
)


def _postgres(request: pytest.FixtureRequest) -> Callable[..., Any]:
    from coordinator.store.postgres import PostgresStore

    url = request.getfixturevalue("pg_url")  # a fresh database on a real server
    return lambda **kw: PostgresStore(url, **kw)


# name -> a factory taking the test's request and the store's keyword arguments; each
# call opens the same database again (as a restart or a second process would).
IMPLEMENTATIONS: dict[str, Callable[[pytest.FixtureRequest], Callable[..., Any]]] = {
    "sqlite": lambda req: lambda **kw: SqliteStore(req.getfixturevalue("tmp_path") / "c.db", **kw),
    "postgres": _postgres,
}
INTERFACE = frozenset(n for n in vars(Store) if not n.startswith("_"))


class OnlyTheInterface:
    """Hands the suite a store on which only the :class:`Store` methods exist, so a test
    that reaches past the interface (a connection, a table) fails for every backend."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name not in INTERFACE:
            raise AttributeError(f"{name!r} is not part of the Store interface")
        return getattr(self._store, name)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., Store]]:
    opened: list[Any] = []
    open_store = IMPLEMENTATIONS[request.param](request)

    def factory(**kwargs: Any) -> Store:
        s = open_store(**kwargs)
        opened.append(s)
        return OnlyTheInterface(s)  # type: ignore[return-value]

    yield factory
    for s in opened:
        s.close()


def test_the_suite_sees_only_the_interface(make: Any) -> None:
    store = make()
    assert "messages" in INTERFACE and "commit" in INTERFACE
    with pytest.raises(AttributeError, match="not part of the Store interface"):
        _ = store.conn


def tel(site: str, seq: int, n: int = 3, at: int = 1000) -> DurableRow:
    samples = tuple((f"s{i}", 10_000 + seq, float(seq + i), "C", "good") for i in range(n))
    return DurableRow(
        site, seq, "telemetry", 1, 10_000 + seq, at, False, "dev", None, samples, None
    )


def test_replayed_messages_are_stored_once_with_their_samples(make: Any) -> None:
    store = make()
    new = store.add_messages([tel("a", 1), tel("a", 2), tel("b", 1)])
    assert [(r.site, r.seq) for r in new] == [("a", 1), ("a", 2), ("b", 1)]
    store.commit()
    # A replay (outage) mixed with new rows and an in-batch duplicate (broker redelivery).
    new = store.add_messages([tel("a", 2), tel("a", 3), tel("a", 3), tel("b", 1)])
    store.commit()
    assert [(r.site, r.seq) for r in new] == [("a", 3)]
    counts = store.counts()
    assert (counts["messages"], counts["telemetry"]) == (4, 12)
    assert [(r.site, r.seq) for r in store.messages()] == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]
    assert store.messages("a")[2] == tel("a", 3)  # its three samples, in order
    assert [r.seq for r in store.messages("b", epoch="")] == [1]
    assert store.messages("b", epoch="other") == []


def test_large_batches_store_every_sample_in_order(make: Any) -> None:
    # More samples than one insert statement holds, and a remainder (SQLite inserts the
    # samples in statements of many rows), with messages of uneven sizes and replays.
    store = make()
    first = [tel("a", seq, n=37 + seq % 5) for seq in range(1, 12)]
    assert [r.seq for r in store.add_messages(first)] == list(range(1, 12))
    store.commit()
    again = [tel("b", 1, n=1), tel("a", 5), tel("a", 12, n=250), tel("b", 2, n=99)]
    assert [(r.site, r.seq) for r in store.add_messages(again)] == [("b", 1), ("a", 12), ("b", 2)]
    store.commit()
    expected = [*first, again[2]]
    assert store.messages("a") == expected
    assert store.messages("b") == [again[0], again[3]]
    total = sum(len(r.samples) for r in [*expected, again[0], again[3]])
    assert store.counts()["telemetry"] == total


def test_job_messages_keep_their_payload(make: Any) -> None:
    store = make()
    row = DurableRow("a", 7, "job_status", 1, 5, 6, True, None, "j1", (), '{"state":"done"}')
    assert store.add_messages([row]) == [row]
    store.commit()
    assert store.messages() == [row]
    assert store.counts()["telemetry"] == 0


def test_streams_of_one_site_are_kept_apart(make: Any) -> None:
    store = make()
    old, new = tel("a", 1)._replace(epoch="e1"), tel("a", 1)._replace(epoch="e2")
    assert store.add_messages([old, new]) == [old, new]
    store.commit()
    assert store.messages("a", epoch="e2") == [new]
    assert store.seqs_above("a", 0, epoch="e1") == [1]
    assert store.seqs_above("a", 0) == []  # the epoch "" holds nothing


def test_commit_makes_writes_visible_to_other_stores(make: Any) -> None:
    store = make()
    store.add_messages([tel("a", 1)])
    other = make()  # a second handle on the same database, as a reader process has
    assert other.counts()["messages"] == 0
    store.commit()
    assert other.counts()["messages"] == 1
    store.add_messages([tel("a", 2)])
    store.rollback()
    assert [r.seq for r in other.messages()] == [1]
    assert store.integrity_ok() and other.integrity_ok()


def test_sites_round_trip_and_sessions_count_starts(make: Any) -> None:
    store = make()
    assert store.begin_session() == 1
    rec = SiteRecord("a", registration='{"name":"A"}', status="online", session=4, acked=9)
    rec.cpu_percent = 12.5
    store.save_sites([rec, SiteRecord("b")])
    store.commit()
    store.close()
    again = make()
    assert again.begin_session() == 2
    loaded = {r.site: r for r in again.load_sites()}
    assert loaded["a"] == rec
    assert loaded["b"] == SiteRecord("b")


def test_seqs_and_gaps_above(make: Any) -> None:
    store = make()
    store.add_messages([tel("a", s) for s in (1, 2, 5, 7)] + [tel("b", 9)])
    assert store.add_gap("a", 3, 4, 1) is True
    assert store.add_gap("a", 3, 4, 2) is False  # announced again: recorded once
    store.commit()
    assert store.seqs_above("a", 2) == [5, 7]
    assert store.gaps_above("a", 2) == [(3, 4)]
    assert store.gaps_above("a", 4) == []


def test_the_contiguous_ack_is_read_from_the_database(make: Any) -> None:
    # Several ingest workers commit one stream's messages out of order: any of them
    # reads the ack from what is committed, counting recorded gaps as done.
    store = make()
    assert store.contiguous_acked("a", "", 0) == 0  # nothing stored
    store.add_messages([tel("a", s) for s in (2, 3, 6, 7, 12)] + [tel("b", 1)])
    store.commit()
    assert store.contiguous_acked("a", "", 0) == 0  # seq 1 is missing
    store.add_messages([tel("a", 1)])
    store.commit()
    assert store.contiguous_acked("a", "", 0) == 3
    assert store.add_gap("a", 4, 5, 1) and store.add_gap("a", 8, 11, 1)
    store.commit()
    assert store.contiguous_acked("a", "", 0) == 12  # 1-3, gap 4-5, 6-7, gap 8-11, 12
    assert store.contiguous_acked("a", "", 7) == 12
    assert store.contiguous_acked("a", "other", 0) == 0  # another epoch
    assert store.contiguous_acked("b", "", 0) == 1


def test_the_saved_stream_ack_is_where_another_worker_starts(make: Any) -> None:
    store = make()
    assert store.stream_acked("a", "e1") == 0  # no stream yet
    store.save_streams([StreamRow("a", "e1", 1, 2, 40), StreamRow("a", "e2", 1, 2, 7)])
    store.commit()
    assert store.stream_acked("a", "e1") == 40
    assert store.stream_acked("a", "e2") == 7
    assert store.stream_acked("b", "e1") == 0


def test_events_heartbeats_dead_letters_and_retention(make: Any) -> None:
    store = make()
    store.add_events([EventRow("a", 5, "state", None, "online", "status online", 1)])
    hb = HeartbeatRow("a", 100, 99, 1, 1.0, 2.0, 3.0, 4.0, 5.0, 6, 7, 8, 9, 0)
    store.add_heartbeats([hb, hb._replace(received_at=300)])
    store.add_messages([tel("a", 1), tel("a", 2000)])  # sample ts 10_001.. and 12_000..
    store.add_dead_letters([DeadLetterRow("t", "x", 1, "not_json", "bad", 5)])
    store.save_sites([SiteRecord("a")])  # retention applies to the sites the store knows
    store.commit()
    store.add_messages([DurableRow("a", 3, "job_status", 1, 5, 6, False, None, "j", (), "{}")])
    assert store.purge(heartbeats_before=200, telemetry_before=11_000) == (1, 3, 1)
    store.commit()
    assert [r.seq for r in store.messages()] == [3, 2000]
    # Every field comes back where it went in (the heartbeat's later fields included).
    full = hb._replace(received_at=300, epoch="e", samples_dropped=4, outbox_error="disk full")
    store.add_heartbeats([full, hb._replace(site="b", received_at=400)])
    store.commit()
    assert store.heartbeats("a") == [hb._replace(received_at=300), full]
    counts = store.counts()
    assert counts["heartbeats"] == 3 and counts["telemetry"] == 3
    assert (counts["events"], counts["dead_letters"], counts["sites"]) == (1, 1, 1)


def test_named_migrations_run_once_and_others_can_add_tables(make: Any) -> None:
    calls: list[str] = []

    def runs(db: Any) -> None:
        calls.append("runs")
        db["runs"].create({"run_id": str, "task": str}, pk="run_id")

    store = make(extra_migrations=[Migration("train_0001_runs", runs)])
    store.close()
    store = make(extra_migrations=[Migration("train_0001_runs", runs)])
    assert calls == ["runs"]
    assert store.migrations() == [
        "core_0001",
        "core_0002_streams",
        "core_0003_alarms",
        "deploy_0001_deployments",
        "train_0001_runs",
    ]


def test_historical_samples_are_kept_for_the_retention_after_they_arrived(make: Any) -> None:
    store = make()
    store.save_sites([SiteRecord("a")])
    # A file replayed with its recorded (old) times: sample ts 10_001.., arrived at 50_000.
    imported = tel("a", 1, at=50_000)._replace(historical=True)
    store.add_messages([imported, tel("a", 2, at=9_000)])  # and a live one, ts 10_002
    store.commit()
    # Retention cut at 20_000: the live sample is old by its own time, the imported one
    # arrived after the cut and stays (by their timestamps both would go).
    assert store.purge(heartbeats_before=0, telemetry_before=20_000) == (0, 3, 1)
    store.commit()
    assert store.counts()["telemetry"] == 3
    assert [r.seq for r in store.messages()] == [1]
    # Once it arrived longer ago than the retention, it goes with its message row.
    assert store.purge(heartbeats_before=0, telemetry_before=60_000) == (0, 3, 1)
    store.commit()
    assert store.counts()["telemetry"] == 0 and store.messages() == []


def test_alarms_keep_one_current_state_per_rule_and_device(make: Any) -> None:
    store = make()
    active = AlarmRow(
        "a", "e1", "rul_low", "active", "critical", "rul < 30", 24.0, "r:5", 10, 11, 12
    )
    other = active._replace(device="e2")
    store.save_alarms([active, other])
    store.commit()
    cleared = active._replace(state="cleared", value=41.0, since=20, ts=21, updated_at=22)
    store.save_alarms([cleared])
    store.commit()
    again = make()  # a restart reads the same state
    assert sorted(again.load_alarms()) == sorted([cleared, other])
    # A prediction is a durable message with its payload and device.
    row = DurableRow("a", 8, "prediction", 1, 5, 6, False, "e1", None, (), '{"outputs":{}}')
    assert again.add_messages([row, row]) == [row]
    again.commit()
    assert again.messages() == [row]


def _deployment(dep: str, version: str, at: int) -> DeploymentRow:
    return DeploymentRow(
        dep, at, version, "cmapss-rul", "c" * 64, 10.0, ("rul < 30",), ("e1",), False, "alice"
    )


def test_a_deployment_and_its_sites_are_stored_and_read_back(make: Any) -> None:
    store = make()
    sent = [
        SiteDeploymentRow(s, "d1", "run-1-r3", "cmapss-rul", "sent", "", 100, "", 100)
        for s in ("a", "b")
    ]
    store.add_deployment(_deployment("d1", "run-1-r3", 100), sent)
    store.commit()
    again = make()  # another connection (a restart, or serve's writer thread)
    assert again.deployments() == [_deployment("d1", "run-1-r3", 100)]
    assert again.deployments("nope") == []
    assert again.site_deployments() == sent
    assert again.site_deployments(site="b") == [sent[1]]
    assert again.site_deployment("a", "d1") == sent[0]
    assert again.site_deployment("a", "d2") is None
    # The site's reports replace the row (key: site, deployment id).
    active = sent[0]._replace(state="active", since=150, updated_at=151, activated_at=150,
                              epoch="ep", seq=7)  # fmt: skip
    again.save_site_deployments([active])
    again.commit()
    assert make().site_deployments(deployment_id="d1") == [active, sent[1]]


def test_deployment_history_lists_what_became_active_latest_first(make: Any) -> None:
    store = make()
    for dep, version, at in (("d1", "v1", 100), ("d2", "v2", 200), ("d3", "v3", 300)):
        row = SiteDeploymentRow("a", dep, version, "t", "sent", "", at, "", at)
        store.add_deployment(_deployment(dep, version, at), [row])
    store.commit()
    v1 = SiteDeploymentRow("a", "d1", "v1", "t", "replaced", "", 210, "", 210, 110, "e", 3)
    v2 = SiteDeploymentRow("a", "d2", "v2", "t", "active", "", 205, "v1", 206, 205, "e", 4)
    # d3 never became active (rejected): not part of the history.
    v3 = SiteDeploymentRow("a", "d3", "v3", "t", "rejected", "no", 305, "", 306, None, "e", 5)
    store.save_site_deployments([v1, v2, v3])
    store.commit()
    assert store.deployment_history("a") == [v2, v1]
    assert store.deployment_history("b") == []
