"""``cli_serve.run`` embedded: another module's migration, ``on_start`` with the bus and
the writer thread (how training adds tables and publishes commands)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from coordinator.cli.serve import run
from coordinator.settings import CoordinatorSettings
from coordinator.store import Migration
from fedmq_runtime.settings import MqttSettings
from schemas import PingCommand, Topics, encode
from tests.helpers.broker import Broker
from tests.helpers.mqtt import TestClient


def test_run_applies_extra_migrations_and_hands_out_bus_and_writer(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    t = Topics(prefix)
    settings = CoordinatorSettings(
        mqtt=MqttSettings(port=own_broker.port, prefix=prefix), db=tmp_path / "c.db"
    )
    watcher = TestClient(own_broker.port).connect().subscribe(t.cmd("s1", "ping"))
    stop = threading.Event()
    got: dict[str, Any] = {}

    def extra_table(db: Any) -> None:
        db["extras"].create({"extra_id": str, "task": str}, pk="extra_id")

    def on_start(bus: Any, ingest: Any) -> None:
        def write(store: Any) -> int:
            store.conn.execute("INSERT INTO extras VALUES ('r1', 'rul')")
            # serve's own training tables are there too, and the writer feeds the driver.
            store.conn.execute("SELECT count(*) FROM train_jobs").fetchone()
            assert ingest.on_job_messages is not None
            return int(store.conn.execute("SELECT count(*) FROM extras").fetchone()[0])

        got["rows"] = ingest.call(write)
        ping = PingCommand(site="s1", session=1, cmd_id="c1", expires_at=2**40)
        bus.publish(t.cmd("s1", "ping"), encode(ping), 1, False)

    migrations = [Migration("test_0001_extras", extra_table)]
    thread = threading.Thread(
        target=lambda: got.setdefault("code", run(settings, stop, migrations, on_start))
    )
    thread.start()
    try:
        msg = watcher.expect(lambda m: True, timeout=15)
        assert b'"cmd_id":"c1"' in msg.payload
        assert got["rows"].result(timeout=10) == 1
    finally:
        stop.set()
        thread.join(20)
        watcher.close()
    assert got["code"] == 0
