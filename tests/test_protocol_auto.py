"""``protocol = "auto"``: MQTT 5 where the broker speaks it, 3.1.1 where it does not.

Unit tests of the choice (fedmq_runtime.mqtt_protocol); then the real thing: a real
``fedmq-site run`` with no protocol setting streams through Mosquitto (MQTT 5), NATS and
RabbitMQ (both 3.1.1 only, refusing MQTT 5 in two different ways) into a real
``fedmq serve`` with its default protocol, telemetry stored and acked; an explicit
``protocol = "5"`` against RabbitMQ logs why it cannot connect; and a small ``fedmq train``
run (fake training sites) finishes through NATS with no protocol flag anywhere.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.admin.signing import generate_keypair
from coordinator.training.aggregate import dump_npz
from fedmq_runtime.mqtt_protocol import UNSUPPORTED_PROTOCOL, ProtocolChoice
from fedmq_runtime.settings import MqttSettings
from site_node.outbox_store import read_stats
from tests.helpers.coord_proc import Coordinator, fedmq, sites_json, wait_until
from tests.helpers.db import query
from tests.helpers.fake_trainer import FakeTrainer
from tests.helpers.other_brokers import NatsBroker, RabbitBroker, nats_broker, rabbitmq_broker
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)

LOG = logging.getLogger("test.protocol")

# --- the choice (unit) -----------------------------------------------------------------


def test_auto_is_the_default() -> None:
    assert MqttSettings().protocol == "auto"


def test_auto_falls_back_on_unsupported_protocol_connack(caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    p = ProtocolChoice("auto", "b:1883", LOG)
    assert p.current == "5"
    assert p.connack(UNSUPPORTED_PROTOCOL, "Unsupported protocol version") is True
    assert p.current == "3.1.1"
    assert "refused MQTT 5 (CONNACK: Unsupported protocol version)" in caplog.text
    assert p.connack(0, "Success") is False
    assert "using MQTT 3.1.1 (protocol auto)" in caplog.text
    # settled: a later close keeps 3.1.1
    assert p.closed_before_connack("Unspecified error") is False
    assert p.current == "3.1.1"


def test_auto_falls_back_when_closed_before_connack_and_keeps_trying_both(caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    p = ProtocolChoice("auto", "b:1883", LOG)
    assert p.closed_before_connack("Unspecified error") is True
    assert p.current == "3.1.1"
    assert "closed the connection before CONNACK (MQTT 5, Unspecified error)" in caplog.text
    assert p.closed_before_connack("Unspecified error") is False  # neither answered
    assert p.current == "5"


def test_auto_settles_on_5_at_the_first_connack(caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    p = ProtocolChoice("auto", "b:1883", LOG)
    assert p.connack(0x87, "Not authorized") is False  # a refusal, but in MQTT 5
    assert p.current == "5" and p.settled
    assert "speaks MQTT 5" in caplog.text
    assert p.closed_before_connack("x") is False and p.current == "5"


def test_explicit_versions_never_switch_and_5_hints(caplog: Any) -> None:
    five = ProtocolChoice("5", "b:1", LOG)
    assert five.connack(UNSUPPORTED_PROTOCOL, "Unsupported protocol version") is False
    assert five.closed_before_connack("Unspecified error") is False
    assert five.current == "5"
    assert 'may not speak MQTT 5: set mqtt.protocol = "auto" or "3.1.1"' in caplog.text
    old = ProtocolChoice("3.1.1", "b:1", LOG)
    assert old.closed_before_connack("x") is False and old.current == "3.1.1"
    with pytest.raises(ValueError, match=r"auto, 5 or 3\.1\.1"):
        ProtocolChoice("4", "b:1", LOG)


# --- real brokers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsBroker]:
    with nats_broker(tmp_path_factory.mktemp("nats")) as b:
        yield b


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitBroker]:
    with rabbitmq_broker(tmp_path_factory.mktemp("rabbit")) as b:
        yield b


def _port(kind: str, request: pytest.FixtureRequest) -> int:
    return int(request.getfixturevalue({"mosquitto": "broker"}.get(kind, kind)).port)


CHOSEN = {
    "mosquitto": "speaks MQTT 5: using it (protocol auto)",
    "nats": "using MQTT 3.1.1 (protocol auto)",
    "rabbit": "using MQTT 3.1.1 (protocol auto)",
}
# How each broker refuses MQTT 5 (logged with its reason before the fallback).
REFUSAL = {
    "mosquitto": None,
    "nats": "refused MQTT 5 (CONNACK: Unsupported protocol version)",
    "rabbit": "closed the connection before CONNACK (MQTT 5, ",
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mosquitto", "nats", "rabbit"])
def test_site_and_serve_stream_through_each_broker_with_no_protocol_setting(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_site: Callable[..., SiteProc],
) -> None:
    port = _port(kind, request)
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    db = tmp_path / "c.db"
    coord = Coordinator(db, port, prefix).start()
    try:
        # wait_ready's own subscription check is an MQTT 5 client: it is skipped when the
        # broker refuses it; the site's online state below is the real readiness check.
        coord.wait_ready(90)
        site = make_site(port, prefix, site_id=f"{kind}-site", rate_hz=200.0, rows=400)
        assert "protocol" not in site.settings["mqtt"]
        wait_until(
            lambda: sites_json(db).get(f"{kind}-site", {}).get("state") == "online",
            90,
            "site online",
            step=0.3,
        )

        def drained() -> bool:
            st = read_stats(site.data_dir / "outbox.db")
            n = query(db, "SELECT count(*) FROM telemetry WHERE site = ?", f"{kind}-site")
            return st.depth == 0 and st.last_acked == st.last_seq and bool(n) and n[0][0] == 400

        wait_until(drained, 120, "400 samples stored and every message acked", step=0.5)
        values = query(
            db,
            "SELECT value FROM telemetry WHERE site = ? ORDER BY value",
            site.settings["site_id"],
        )
        assert [v for (v,) in values] == [float(i) for i in range(400)]
        for log in (site.log_text(), coord.log_text()):
            assert CHOSEN[kind] in log, log[-3000:]
            refusal = REFUSAL[kind]
            if refusal is None:
                assert "3.1.1" not in log
            else:
                assert refusal in log
        assert site.terminate() == 0
    finally:
        assert coord.stop() == 0


@pytest.mark.slow
def test_explicit_mqtt5_against_rabbitmq_logs_why(
    rabbit: RabbitBroker, tmp_path: Path, make_site: Callable[..., SiteProc]
) -> None:
    """Before: only ``reconnecting in X s``. Now every attempt says what the broker did."""
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    site = make_site(rabbit.port, prefix, mqtt={"protocol": "5"})
    site.wait_log('may not speak MQTT 5: set mqtt.protocol = "auto" or "3.1.1"', 60)
    text = site.log_text()
    assert "closed the connection before CONNACK (MQTT 5, " in text
    assert "3.1.1 (protocol auto)" not in text
    assert "connected to" not in text


@pytest.mark.slow
def test_serve_forced_to_mqtt5_against_rabbitmq_logs_why(
    rabbit: RabbitBroker, tmp_path: Path
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    coord = Coordinator(tmp_path / "c.db", rabbit.port, prefix, ("--protocol", "5")).start()
    try:
        wait_until(
            lambda: 'may not speak MQTT 5: set mqtt.protocol = "auto"' in coord.log_text(),
            60,
            "serve's reason",
        )
        text = coord.log_text()
        assert "closed the connection before CONNACK (MQTT 5, " in text
        assert "connected to" not in text
    finally:
        assert coord.stop() == 0


# --- fedmq train through NATS ------------------------------------------------------------

TASK, CODE_HASH = "toy", "c" * 64


def _answer(delta: float, n: int) -> Callable[[int, Any], tuple[bytes, int]]:
    def answer(_rnd: int, glob: dict[str, np.ndarray] | None) -> tuple[bytes, int]:
        base = glob if glob is not None else {"w": np.zeros((2, 2), np.float32)}
        return dump_npz({k: v + np.float32(delta) for k, v in base.items()}), n

    return answer


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nats", "rabbit"])
def test_fedmq_train_through_3_1_1_brokers_with_flags_only(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    port = _port(kind, request)
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp_path / "coord.key", tmp_path / "coord.pub")
    db = tmp_path / "c.db"
    coord = Coordinator(db, port, prefix, ("--signing-key", str(tmp_path / "coord.key")))
    # the fake sites are plain paho clients: MQTT 3.1.1 by default, which both speak
    sites = [
        FakeTrainer(port, prefix, f"{kind}-train-{i}", TASK, CODE_HASH, _answer(i, 100), 1000)
        for i in (1, 3)
    ]
    try:
        coord.start().wait_ready(90)
        for s in sites:
            s.start()
        ids = [s.site for s in sites]
        wait_until(
            lambda: all(sites_json(db).get(s, {}).get("state") == "online" for s in ids),
            60,
            f"{ids} online",
            step=0.3,
        )
        out = fedmq(
            "train", "--task", TASK, "--sites", ",".join(ids), "--rounds", "1",
            "--min-sites", "2", "--round-timeout", "60", "--wait-sites", "30",
            "--db", str(db), timeout=180, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "disconnected from broker" not in out.stderr  # train is an HTTP client now
        runs = query(db, "SELECT state FROM runs")
        assert runs == [("done",)], runs
    finally:
        for s in sites:
            s.stop()
        assert coord.stop() == 0
    log = coord.log_text()
    assert "using MQTT 3.1.1 (protocol auto)" in log
    # serve's own stop is not a broker problem: no "(reconnecting)" warning at the end
    assert "WARNING coordinator.bus: disconnected" not in log
    assert "INFO coordinator.bus: disconnected from broker" in log


def test_fedmq_train_takes_no_protocol_flag() -> None:
    out = fedmq("train", "--task", TASK, "--protocol", "3.1.1", check=False)
    assert out.returncode == 2
    assert "fedmq train no longer connects to the broker (--protocol)" in out.stderr
