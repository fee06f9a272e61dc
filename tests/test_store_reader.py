"""One contract for every StoreReader implementation: what the read commands see of what
the writer stored. Data goes in through the :class:`Store` interface and comes out only
through the :class:`StoreReader` interface (add a backend to ``IMPLEMENTATIONS``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.store import (
    DeadLetterRow,
    DurableRow,
    EventRow,
    HeartbeatRow,
    SiteRecord,
    SqliteStore,
    Store,
    StreamRow,
)
from coordinator.store.read import SqliteReader, StoreReader
from schemas import PlantHierarchy, Registration, encode

# name -> (open the store, open a reader) on the test's tmp_path: the same database.
IMPLEMENTATIONS: dict[str, tuple[Callable[[Path], Any], Callable[[Path], Any]]] = {
    "sqlite": (lambda tmp: SqliteStore(tmp / "c.db"), lambda tmp: SqliteReader.open(tmp / "c.db")),
}
INTERFACE = frozenset(n for n in vars(StoreReader) if not n.startswith("_"))
NOW = 1_000_000_000


class OnlyTheInterface:
    """The reader with nothing but the :class:`StoreReader` methods."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def __getattr__(self, name: str) -> Any:
        if name not in INTERFACE:
            raise AttributeError(f"{name!r} is not part of the StoreReader interface")
        return getattr(self._reader, name)


def _registration(site: str, name: str) -> str:
    reg = Registration(
        site=site,
        session=1,
        seq=0,
        name=name,
        hierarchy=PlantHierarchy(enterprise="acme", site="det"),
    )
    return encode(reg).decode()


def _fill(store: Store) -> None:
    store.meta_set("patience", "3")
    store.meta_set("session", "4")
    store.save_sites(
        [
            # online: status online, heartbeat 1 s ago (interval 1 s, patience 3)
            SiteRecord("a", _registration("a", "Press A"), "online", 2, last_alive=NOW - 1_000,
                       interval_s=1.0, last_seen=NOW - 1_000, epoch="e2"),
            # stale: status online, no heartbeat for 10 s
            SiteRecord("b", None, "online", 1, last_alive=NOW - 10_000, interval_s=1.0),
            SiteRecord("c", None, "offline", 1),
        ]
    )  # fmt: skip
    samples = [(n, NOW - 5_000 + i, float(i), "C", "good") for i, n in enumerate(("t", "p"))]
    rows = [
        DurableRow("a", 1, "telemetry", 2, NOW, NOW, False, "press", None, samples, None, "e1"),
        DurableRow("a", 1, "telemetry", 2, NOW, NOW, False, "oven", None, samples[:1], None, "e2"),
    ]
    store.add_messages(rows)
    store.save_streams([StreamRow("a", "e1", 10, 20, 1), StreamRow("a", "e2", 30, 40, 1)])
    store.add_events(
        [
            EventRow("a", NOW - 2, "state", None, "online", "status online", 1),
            EventRow("b", NOW - 1, "state", "online", "stale", "no heartbeat", 1),
        ]
    )
    hb = HeartbeatRow("a", NOW - 1_000, NOW, 2, 1.0, 5.0, 1.0, 2.0, 3.0, 0, 0, 0, 1, 0, "e2")
    store.add_heartbeats([hb])
    store.add_dead_letters(
        [
            DeadLetterRow("t1", "x", 1, "not_json", "bad", NOW),
            DeadLetterRow("t2", "y", 1, "schema", "bad", NOW),
        ]
    )
    store.commit()


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def reader(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreReader]:
    open_store, open_reader = IMPLEMENTATIONS[request.param]
    store = open_store(tmp_path)
    _fill(store)
    store.close()
    opened = open_reader(tmp_path)
    yield OnlyTheInterface(opened)  # type: ignore[misc]
    opened.close()


def test_sites_states_are_computed_at_read_time(reader: StoreReader) -> None:
    rows, info = reader.sites(now=NOW)
    assert [(r["site"], r["state"]) for r in rows] == [
        ("a", "online"),
        ("b", "stale"),
        ("c", "offline"),
    ]
    assert (info["running"], info["session"], info["patience"]) == (False, 4, 3.0)
    a = rows[0]
    assert (a["name"], a["registered"], a["location"], a["epoch"]) == (
        "Press A",
        True,
        "acme/det",
        "e2",
    )
    assert [r["site"] for r in reader.sites("stale", now=NOW)[0]] == ["b"]
    assert reader.coordinator_info(NOW)["running"] is False


def test_site_detail_streams_events_and_heartbeat(reader: StoreReader) -> None:
    assert reader.site_detail("nope") is None
    detail = reader.site_detail("a")
    assert detail is not None
    assert detail["messages"] == 2 and detail["registration"]["name"] == "Press A"
    assert [(s["epoch"], s["messages"]) for s in detail["streams"]] == [("e2", 1), ("e1", 1)]
    assert [e["event"] for e in detail["events"]] == ["state"]
    assert detail["heartbeat"]["epoch"] == "e2"


def test_telemetry_events_and_dead_letters_filter_and_order(reader: StoreReader) -> None:
    assert [(r["device"], r["name"]) for r in reader.telemetry("a")] == [
        ("press", "t"),
        ("oven", "t"),
        ("press", "p"),
    ]  # oldest first
    assert [r["name"] for r in reader.telemetry("a", device="press", sensor="p")] == ["p"]
    assert reader.telemetry("a", since=NOW) == []
    assert len(reader.telemetry("a", limit=1)) == 1
    assert [e["site"] for e in reader.events()] == ["b", "a"]  # newest first
    assert [e["site"] for e in reader.events(site="a", limit=5)] == ["a"]
    assert [d["topic"] for d in reader.dead_letters()] == ["t2", "t1"]
    assert [d["topic"] for d in reader.dead_letters("not_json")] == ["t1"]
    assert reader.telemetry_counts() == {"a": 3}
    assert list(reader.registrations()) == ["a"]


def test_training_reads_of_a_database_without_training(reader: StoreReader) -> None:
    assert reader.runs() == [] and reader.models() == []
    assert reader.run_detail("r1") is None and reader.model_blob("m1") is None
    assert reader.jobs() == [] and reader.api_url() is None


def test_the_suite_sees_only_the_interface(reader: StoreReader) -> None:
    with pytest.raises(AttributeError, match="not part of the StoreReader interface"):
        _ = reader._conn  # type: ignore[attr-defined]


def test_deployments_active_version_and_history(tmp_path: Path) -> None:
    from coordinator.store import DeploymentRow, SiteDeploymentRow

    for name, (open_store, open_reader) in sorted(IMPLEMENTATIONS.items()):
        where = tmp_path / name
        where.mkdir()
        store = open_store(where)
        _fill(store)
        store.add_deployment(
            DeploymentRow("d1", 10, "v1", "toy", "c" * 64, 5.0, ("rul < 30",), (), False, "t"),
            [SiteDeploymentRow("a", "d1", "v1", "toy", "sent", "", 10, "", 10)],
        )
        store.save_site_deployments(
            [SiteDeploymentRow("a", "d1", "v1", "toy", "active", "", 20, "", 21, 20, "e2", 5)]
        )
        store.commit()
        store.close()
        reader = OnlyTheInterface(open_reader(where))
        (row,) = reader.deployments()
        assert row["site"] == "a" and row["active"]["model_version"] == "v1"
        assert row["active"]["activated_at"] == 20 and row["active"]["rules"] == ["rul < 30"]
        assert reader.deployments(site="b") == []
        assert [h["state"] for h in reader.deployments("a", all_history=True)] == ["active"]
        reader.close()  # type: ignore[attr-defined]
