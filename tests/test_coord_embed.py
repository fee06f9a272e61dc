"""``coordinator.cli.serve.run`` embedded in a process of one's own (as the poison suite
breaks its round driver): it migrates its own store, training tables included, announces
its control API, publishes through its own bus (``cmd/rebirth`` to an unregistered site),
stores what sites send, and on ``stop`` says offline and returns 0."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from coordinator.api.client import ApiClient
from coordinator.cli.serve import run
from coordinator.settings import CoordinatorSettings
from coordinator.store.read import DatabaseMissing, NotAFedmqDatabase, SqliteReader
from fedmq_runtime.settings import MqttSettings
from schemas import CoordinatorStatus, Registration, SiteStatus, Topics, encode
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Received, TestClient, wait_for


def _reader(db: Path) -> SqliteReader | None:
    try:
        return SqliteReader.open(db)
    except (DatabaseMissing, NotAFedmqDatabase):
        return None


def _read(db: Path, what: str) -> Any:
    reader = _reader(db)
    if reader is None:
        return None
    try:
        return getattr(reader, what)()
    finally:
        reader.close()


def _coordinator(t: Topics, state: str) -> Any:
    def match(m: Received) -> bool:
        if m.topic != t.coordinator_status():
            return False
        return CoordinatorStatus.model_validate_json(m.payload).state == state

    return match


def test_run_embedded_stores_publishes_serves_its_api_and_stops(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    t = Topics(prefix)
    db = tmp_path / "c.db"
    settings = CoordinatorSettings(mqtt=MqttSettings(port=own_broker.port, prefix=prefix), db=db)
    watcher = TestClient(own_broker.port).connect()
    watcher.subscribe(t.coordinator_status()).subscribe(t.cmd("s1", "rebirth"))
    site = TestClient(own_broker.port).connect()
    stop = threading.Event()
    got: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: got.setdefault("code", run(settings, stop, http="127.0.0.1:0"))
    )
    thread.start()
    try:
        watcher.expect(_coordinator(t, "online"), timeout=15)
        # Its store holds the training tables, and its control API answers where announced.
        wait_for(lambda: _read(db, "api_url"), 15, "control API URL announced")
        assert _read(db, "runs") == []
        assert ApiClient(_read(db, "api_url"), None).health() is True
        # An unregistered site that comes online is asked to register through serve's bus.
        online = SiteStatus(site="s1", session=1, state="online")
        site.publish(t.status("s1"), encode(online), retain=True)
        watcher.expect(lambda m: m.topic == t.cmd("s1", "rebirth"), timeout=15)
        reg = Registration(site="s1", session=1, seq=0, name="Press 1", approval_mode="manual")
        site.publish(t.registration("s1"), encode(reg), retain=True)
        wait_for(lambda: (_read(db, "registrations") or {}).get("s1") == reg, 15, "stored")
    finally:
        stop.set()
        thread.join(20)
        site.close()
    try:
        assert not thread.is_alive()
        assert got["code"] == 0
        watcher.expect(_coordinator(t, "offline"), timeout=10)
    finally:
        watcher.close()
