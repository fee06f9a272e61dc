"""``fedmq serve`` end to end: real Mosquitto, real site processes, the real CLI."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.admin.signing import generate_keypair, load_public_key
from schemas import RebirthCommand, SiteStatus, Topics, encode, signing_bytes
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import (
    Coordinator,
    fedmq,
    site_state,
    sites_json,
    start_fake_site,
    wait_until,
)
from tests.helpers.mqtt import TestClient


def _states(db: Path) -> dict[str, str]:
    return {s: row["state"] for s, row in sites_json(db).items()}


@pytest.fixture
def procs() -> Any:
    started: list[Any] = []
    yield started
    for p in started:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.wait()


@pytest.mark.slow
def test_twenty_sites_online_then_kill_stop_and_continue(
    own_broker: Broker, prefix: str, tmp_path: Path, procs: list[Any]
) -> None:
    db = tmp_path / "c.db"
    coord = Coordinator(db, own_broker.port, prefix).start()
    procs.append(coord.proc)
    coord.wait_ready()
    names = [f"site-{i:02d}" for i in range(20)]
    launched = time.monotonic()
    for i, name in enumerate(names):
        # site-01 gets a long keepalive so a SIGSTOP shows stale long before its Will.
        keepalive = "30" if i == 1 else "2"
        procs.append(
            start_fake_site(own_broker.port, prefix, name, tmp_path, "--keepalive", keepalive)
        )
    wait_until(lambda: all(site_state(tmp_path, n) for n in names), 30, "sites running")
    running = time.monotonic()
    wait_until(lambda: set(_states(db).values()) == {"online"} and len(_states(db)) == 20, 5,
               "all 20 online")  # fmt: skip
    online = time.monotonic()
    print(f"20 sites: processes up {running - launched:.1f}s, all online +{online - running:.1f}s")

    # kill -9: the broker publishes the Will after 1.5 x keepalive (3 s).
    victim, frozen = procs[1], procs[2]
    victim.kill()
    killed = time.monotonic()
    wait_until(lambda: _states(db)["site-00"] == "offline", 1.5 * 2 + 1.5, "site-00 offline")
    print(f"kill -9 -> offline in {time.monotonic() - killed:.1f}s (keepalive 2 s)")

    # SIGSTOP: socket open, no heartbeats -> stale after PATIENCE x interval (3 x 0.5 s).
    os.kill(frozen.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    wait_until(lambda: _states(db)["site-01"] == "stale", 1.5 + 2.5, "site-01 stale")
    # The last heartbeat may have left up to one interval before the SIGSTOP.
    assert time.monotonic() - stopped >= 1.5 - 0.5

    def stale_event() -> bool:
        out = fedmq("events", "--db", str(db), "--site", "site-01", "--json").stdout
        return any(e["state_to"] == "stale" and "no heartbeat for" in e["reason"]
                   for e in json.loads(out))  # fmt: skip

    wait_until(stale_event, 3, "the coordinator stored the stale transition")
    os.kill(frozen.pid, signal.SIGCONT)
    wait_until(lambda: _states(db)["site-01"] == "online", 5, "site-01 online again")
    states = _states(db)
    assert states["site-00"] == "offline"
    assert all(states[n] == "online" for n in names[1:])
    assert coord.stop() == 0


def test_late_will_of_older_session_and_rebirth(
    own_broker: Broker, prefix: str, tmp_path: Path, procs: list[Any]
) -> None:
    db = tmp_path / "c.db"
    key, pub = tmp_path / "cmd.key", tmp_path / "cmd.pub"
    generate_keypair(key, pub)
    t = Topics(prefix)
    cmds = TestClient(own_broker.port).connect().subscribe(t.cmd("late", "rebirth"))
    coord = Coordinator(db, own_broker.port, prefix, extra=("--signing-key", str(key))).start()
    procs.append(coord.proc)
    coord.wait_ready()
    # This site publishes no registration until the coordinator asks (cmd/rebirth).
    procs.append(
        start_fake_site(own_broker.port, prefix, "late", tmp_path, "--session", "5",
                        "--no-register", "--keepalive", "30")
    )  # fmt: skip
    wait_until(lambda: _states(db).get("late") == "online", 20, "online")
    wait_until(lambda: sites_json(db)["late"]["registered"], 10, "registration after rebirth")
    # The rebirth was signed with the configured key, over its topic and fields.
    raw = cmds.expect(lambda m: True).payload
    signature = base64.b64decode(json.loads(raw)["signature"])
    rebirth = RebirthCommand.model_validate_json(raw)
    load_public_key(pub).verify(signature, signing_bytes(rebirth, prefix))
    cmds.close()
    # A Will of session 4 that arrives after session 5 is online (published by hand).
    client = TestClient(own_broker.port).connect()
    late = SiteStatus(site="late", session=4, state="offline")
    client.publish(t.status("late"), encode(late), qos=1, retain=True)
    wait_until(
        lambda: "ignored" in fedmq("events", "--db", str(db), "--site", "late").stdout,
        10,
        "ignored event",
    )
    assert _states(db)["late"] == "online"
    # The same Will of the current session does count.
    now = SiteStatus(site="late", session=5, state="offline")
    client.publish(t.status("late"), encode(now), qos=1, retain=True)
    wait_until(lambda: _states(db)["late"] == "offline", 10, "offline")
    client.close()
    assert coord.stop() == 0


def test_coordinator_status_retained_online_will_on_kill_and_offline_on_stop(
    own_broker: Broker, prefix: str, tmp_path: Path, procs: list[Any]
) -> None:
    t = Topics(prefix)
    db = tmp_path / "c.db"

    def status(client: TestClient, state: str) -> dict[str, Any]:
        msg = client.expect(lambda m: json.loads(m.payload)["state"] == state, timeout=20)
        assert msg.topic == t.coordinator_status()
        return dict(json.loads(msg.payload))

    coord = Coordinator(db, own_broker.port, prefix).start()
    procs.append(coord.proc)
    coord.wait_ready()
    watcher = TestClient(own_broker.port).connect().subscribe(t.coordinator_status())
    assert status(watcher, "online")["session"] == 1
    coord.kill()  # the broker publishes the retained Last Will
    assert status(watcher, "offline")["session"] == 1
    late = TestClient(own_broker.port).connect().subscribe(t.coordinator_status())
    retained = late.expect(lambda m: True)
    assert retained.retain and json.loads(retained.payload)["state"] == "offline"
    coord = Coordinator(db, own_broker.port, prefix).start()
    procs.append(coord.proc)
    assert status(watcher, "online")["session"] == 2  # a new coordinator session
    assert coord.stop() == 0
    assert status(watcher, "offline")["session"] == 2  # clean shutdown says so itself
    watcher.close()
    late.close()


def test_json_log_file_has_no_secret(own_broker: Broker, prefix: str, tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[mqtt]\nusername = "coordinator"\npassword = "s3cret-pw"\n')
    log = tmp_path / "logs" / "coord.jsonl"
    coord = Coordinator(
        tmp_path / "c.db", own_broker.port, prefix,
        extra=("--config", str(toml), "--log-format", "json", "--log-file", str(log)),
    ).start()  # fmt: skip
    try:
        coord.wait_ready()
        wait_until(lambda: log.exists() and "connected to" in log.read_text(), 10, "log")
    finally:
        assert coord.stop() == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])
    assert any(line["msg"].startswith("coordinator stopped (") for line in lines)
    assert "s3cret-pw" not in log.read_text() + coord.log_text()


def test_mqtt_311_session_acks_and_ignores_its_own_acks(
    own_broker: Broker, prefix: str, tmp_path: Path, procs: list[Any]
) -> None:
    # 3.1.1 has no noLocal: our own acks and commands under P/site/# come back to us.
    db = tmp_path / "c.db"
    coord = Coordinator(db, own_broker.port, prefix, extra=("--protocol", "3.1.1")).start()
    procs.append(coord.proc)
    coord.wait_ready()
    procs.append(
        start_fake_site(own_broker.port, prefix, "old", tmp_path, "--messages", "300",
                        "--no-register", "--keepalive", "30")
    )  # fmt: skip
    wait_until(lambda: (site_state(tmp_path, "old") or {}).get("acked") == 300, 30, "acked")
    wait_until(lambda: sites_json(db).get("old", {}).get("registered"), 10, "rebirth answered")
    assert json.loads(fedmq("dead-letters", "--db", str(db), "--json").stdout) == []
    assert coord.stop() == 0
