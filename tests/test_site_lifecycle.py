"""Site lifecycle against a real Mosquitto, the site running as a real subprocess."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest

from schemas import (
    Codec,
    RebirthCommand,
    Registration,
    SiteStatus,
    Topics,
    TrainCommand,
    encode,
    now_ms,
)
from site_node.state import SiteState
from tests.helpers.broker import Broker
from tests.helpers.mqtt import Received, TestClient
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)
from tests.helpers.wait import wait_for


def _decode(prefix: str, topic: str, payload: bytes) -> object:
    return Codec(Topics(prefix)).decode(topic, payload)


def wait_connected(site: SiteProc, timeout: float = 30.0) -> int:
    path = site.data_dir / "state.json"
    wait_for(lambda: SiteState.read(path).connected, timeout, "site connected")
    return SiteState.read(path).session


def gather(
    sub: TestClient, topics: set[str], keep: Callable[[Received], bool], timeout: float = 30.0
) -> dict[str, Received]:
    """The first message ``keep`` accepts on each of ``topics``: waits for all of them."""
    got: dict[str, Received] = {}

    def complete() -> bool:
        for m in sub.collect(timeout=0.05):
            if m.topic in topics and keep(m):
                got.setdefault(m.topic, m)
        return set(got) == topics

    wait_for(complete, timeout, f"messages on {sorted(topics)}")
    return got


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_late_subscriber_sees_retained_registration_and_status(
    broker: Broker,
    prefix: str,
    make_site: Callable[..., SiteProc],
    mqtt_client: Callable[..., TestClient],
    protocol: str,
) -> None:
    site = make_site(
        broker.port,
        prefix,
        hierarchy={"enterprise": "acme", "line": "l1"},
        mqtt={"protocol": protocol},
    )
    session = wait_connected(site)
    t = Topics(prefix)
    both = {t.status("site-a"), t.registration("site-a")}
    # Once a first subscriber has seen both (live or retained) the broker holds them ...
    watch = mqtt_client().subscribe(t.status("site-a")).subscribe(t.registration("site-a"))
    gather(watch, both, lambda m: b'"online"' in m.payload or "registration" in m.topic)
    # ... and a late subscriber gets them as retained messages.
    sub = mqtt_client().subscribe(t.status("site-a")).subscribe(t.registration("site-a"))
    got = gather(sub, both, lambda m: True)
    status_msg, reg_msg = got[t.status("site-a")], got[t.registration("site-a")]
    assert status_msg.retain and reg_msg.retain
    status = _decode(prefix, status_msg.topic, status_msg.payload)
    reg = _decode(prefix, reg_msg.topic, reg_msg.payload)
    assert isinstance(status, SiteStatus) and status.state == "online"
    assert status.session == session >= 1
    assert isinstance(reg, Registration) and reg.session == session
    assert reg.hierarchy.enterprise == "acme" and reg.heartbeat_interval_s == 1.0
    assert reg.software_version and reg.schema_version.startswith("1.")
    assert [(d.device, d.source) for d in reg.telemetry] == [("counter", "file")]
    assert [(s.name, s.unit) for s in reg.telemetry[0].sensors] == [("n", "count")]
    assert reg.device.cuda is False and reg.tasks == ()


def test_sigterm_publishes_offline_and_exits_zero(
    broker: Broker,
    prefix: str,
    make_site: Callable[..., SiteProc],
    mqtt_client: Callable[..., TestClient],
) -> None:
    t = Topics(prefix)
    sub = mqtt_client().subscribe(t.status("site-a"))
    site = make_site(broker.port, prefix)
    session = wait_connected(site)
    assert site.terminate() == 0
    offline = sub.expect(lambda m: b'"offline"' in m.payload)
    msg = _decode(prefix, offline.topic, offline.payload)
    assert isinstance(msg, SiteStatus) and msg.session == session and msg.reason == "shutdown"
    late = mqtt_client().subscribe(t.status("site-a")).expect(lambda m: m.retain)
    assert json.loads(late.payload)["state"] == "offline"
    assert not SiteState.read(site.data_dir / "state.json").connected


def test_rebirth_republishes_and_unsigned_train_is_refused(
    broker: Broker,
    prefix: str,
    make_site: Callable[..., SiteProc],
    mqtt_client: Callable[..., TestClient],
) -> None:
    t = Topics(prefix)
    site = make_site(broker.port, prefix)
    session = wait_connected(site)
    both = {t.status("site-a"), t.registration("site-a")}
    sub = mqtt_client().subscribe(t.status("site-a")).subscribe(t.registration("site-a"))
    # The site's status and registration: retained copies if it announced before we
    # subscribed, live ones (retain flag 0) if after: "connected" in its state file comes
    # before its announcement, and on a loaded machine the gap is long.
    gather(sub, both, lambda m: True)
    expires = now_ms() + 60_000
    rebirth = RebirthCommand(site="site-a", session=1, cmd_id=uuid.uuid4().hex, expires_at=expires)
    mqtt_client().publish(t.cmd("site-a", "rebirth"), encode(rebirth))
    try:
        gather(sub, both, lambda m: not m.retain)  # republished
    except AssertionError as exc:  # say what the site did (it once failed at load ~10)
        raise AssertionError(f"{exc}\nsite log:\n{site.log_text()[-3000:]}") from None
    # The same cmd_id again is a replay: refused, and nothing is republished.
    mqtt_client().publish(t.cmd("site-a", "rebirth"), encode(rebirth))
    site.wait_log(f"replayed cmd_id {rebirth.cmd_id}", timeout=30)
    assert [m for m in sub.collect(timeout=1.0) if not m.retain] == []
    train = TrainCommand(
        site="site-a",
        session=1,
        cmd_id="t1",
        expires_at=expires,
        job_id="j1",
        run_id="r",
        round=0,
        task="rul",
        code_hash="0" * 64,
    )
    mqtt_client().publish(t.cmd("site-a", "train"), encode(train))
    site.wait_log("refused train command t1", timeout=30)
    assert SiteState.read(site.data_dir / "state.json").session == session


@pytest.mark.slow
def test_kill9_delivers_retained_offline_will_within_1_5x_keepalive(
    broker: Broker,
    prefix: str,
    make_site: Callable[..., SiteProc],
    mqtt_client: Callable[..., TestClient],
) -> None:
    t = Topics(prefix)
    site = make_site(broker.port, prefix)  # keepalive 5 s
    session = wait_connected(site)
    sub = mqtt_client().subscribe(t.status("site-a"))
    sub.collect(timeout=0.5)
    killed = time.monotonic()
    site.kill()
    will = sub.expect(lambda m: b'"offline"' in m.payload, timeout=15)
    elapsed = time.monotonic() - killed
    msg = _decode(prefix, will.topic, will.payload)
    assert isinstance(msg, SiteStatus) and msg.session == session
    assert msg.reason == "connection lost"
    # Mosquitto gives up on a silent client after 1.5 x keepalive; 2.5 s for scheduling on
    # a loaded machine (still well short of 2 x keepalive).
    assert elapsed <= 1.5 * 5 + 2.5, elapsed
    late = mqtt_client().subscribe(t.status("site-a")).expect(lambda m: m.retain)
    assert json.loads(late.payload)["state"] == "offline"


def test_site_started_while_the_broker_is_down_keeps_trying(
    own_broker: Broker, prefix: str, make_site: Callable[..., SiteProc]
) -> None:
    own_broker.stop()
    site = make_site(own_broker.port, prefix)
    site.wait_log("unreachable")
    time.sleep(1.5)
    assert site.alive()
    own_broker.start()
    assert wait_connected(site) >= 1
    assert site.alive()
