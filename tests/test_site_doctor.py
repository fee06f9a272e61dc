"""``fedmq-site doctor`` against a real deployment: the shipped TLS + password + ACL
Mosquitto config, a real ``fedmq serve`` with its signing key, and the site's generated
credentials. Healthy, everything passes; each fault is named by exactly one failing check.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.admin.signing import generate_keypair
from schemas import Topics
from tests.helpers.broker import Broker, free_port
from tests.helpers.coord_proc import Coordinator
from tests.helpers.other_brokers import NatsBroker, nats_broker, rabbitmq_broker
from tests.helpers.secure_broker import (
    COORDINATOR_USER,
    SecureSetup,
    publish_rc,
    secure_setup,
)
from tests.helpers.site_proc import SiteProc, make_site_fixture, to_toml  # noqa: F401 (fixture)
from tests.helpers.wait import wait_for

SITE_BIN = Path(sys.executable).parent / "fedmq-site"
NOT_AUTHORIZED = 135
pytestmark = pytest.mark.slow  # a real deployment: broker, serve, doctor subprocesses
BROKER_CHECKS = ["dns", "tcp", "tls", "connack", "acl", "coordinator", "signing-key", "clock"]


@dataclass
class Deployment:
    setup: SecureSetup
    broker: Broker
    coord: Coordinator
    tmp: Path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("doctor")
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    setup = secure_setup(tmp / "secure", ["site-a"], prefix=prefix)
    (tmp / "broker").mkdir()
    broker = Broker(tmp / "broker", config_text=setup.config_text)
    broker.start()
    coord = Coordinator(
        tmp / "fedmq.db",
        broker.port,
        prefix,
        extra=("--config", str(setup.credentials_file(COORDINATOR_USER))),
        env={"FEDMQ_MQTT__HOST": "localhost"},
    )
    try:
        coord.start()
        wait_for(lambda: "connected to" in coord.log_text(), 60, "serve connected")
        yield Deployment(setup, broker, coord, tmp)
    finally:
        coord.kill()
        setup.close()
        broker.kill()


def _config(d: Deployment, name: str, **changes: Any) -> Path:
    creds = d.setup.credentials("site-a")
    mqtt = {**creds["mqtt"], "port": d.broker.port, **changes.pop("mqtt", {})}
    settings = {
        "site_id": "site-a",
        "data_dir": str(d.tmp / f"{name}-data"),
        "coordinator_public_key_file": creds["coordinator_public_key_file"],
        "mqtt": mqtt,
        **changes,
    }
    path = d.tmp / f"{name}.toml"
    path.write_text(to_toml(settings))
    return path


def _doctor(config: Path) -> tuple[int, dict[str, tuple[str, str]], str]:
    out = subprocess.run(
        [str(SITE_BIN), "doctor", "--config", str(config), "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    checks = {}
    for line in out.stdout.splitlines():
        state, name, *rest = line.split(None, 2)
        if state in ("ok", "FAIL", "WARN", "skip"):
            checks[name] = (state, rest[0] if rest else "")
    return out.returncode, checks, out.stdout + out.stderr


def _failing(checks: dict[str, tuple[str, str]]) -> list[str]:
    return [name for name, (state, _) in checks.items() if state == "FAIL"]


@pytest.fixture(scope="module")
def serial_port() -> Iterator[str]:
    master, slave = pty.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def _serial_device(port: str) -> list[dict[str, Any]]:
    return [{"name": "plc", "source": "serial", "port": port, "columns": [{"name": "t"}]}]


def test_healthy_deployment_passes_every_check(deployment: Deployment, serial_port: str) -> None:
    rc, checks, text = _doctor(_config(deployment, "healthy", devices=_serial_device(serial_port)))
    assert rc == 0, text
    assert _failing(checks) == []
    for name in [*BROKER_CHECKS, "config", "disk", "serial"]:
        assert checks[name][0] == "ok", text
    assert checks["training"][0] == "skip"
    assert "commonName=localhost" in checks["tls"][1] and "expires" in checks["tls"][1]
    assert "accepted as site-a (MQTT 5)" in checks["connack"][1]
    assert checks["coordinator"][1].startswith("online since")
    assert "all checks passed" in text


def test_broker_down_fails_only_tcp(deployment: Deployment) -> None:
    rc, checks, text = _doctor(_config(deployment, "down", mqtt={"port": free_port()}))
    assert rc == 1 and _failing(checks) == ["tcp"], text
    assert "FAILED: tcp" in text
    assert checks["connack"][0] == "skip" and checks["acl"][0] == "skip"


def test_wrong_password_fails_only_connack_with_its_reason(deployment: Deployment) -> None:
    rc, checks, text = _doctor(_config(deployment, "badpw", mqtt={"password": "wrong"}))
    assert rc == 1 and _failing(checks) == ["connack"], text
    assert "reason code 134" in checks["connack"][1] or "reason code 135" in checks["connack"][1]
    assert checks["tls"][0] == "ok"


def test_coordinator_key_mismatch_fails_only_signing_key(deployment: Deployment) -> None:
    generate_keypair(deployment.tmp / "other.key", deployment.tmp / "other.pub")
    config = _config(
        deployment, "otherkey", coordinator_public_key_file=str(deployment.tmp / "other.pub")
    )
    rc, checks, text = _doctor(config)
    assert rc == 1 and _failing(checks) == ["signing-key"], text
    assert "is not the coordinator's" in checks["signing-key"][1]


def test_missing_serial_port_fails_only_serial(deployment: Deployment) -> None:
    config = _config(deployment, "noport", devices=_serial_device("/dev/ttyFEDMQ-MISSING"))
    rc, checks, text = _doctor(config)
    assert rc == 1 and _failing(checks) == ["serial"], text
    assert "/dev/ttyFEDMQ-MISSING: not present" in checks["serial"][1]


def test_acl_forbidding_telemetry_fails_only_acl(deployment: Deployment) -> None:
    acl = deployment.setup.layout.acl
    original = acl.read_text()
    line = f"pattern write {deployment.setup.prefix}/site/%u/telemetry/+\n"
    assert line in original
    t = Topics(deployment.setup.prefix)
    client = deployment.setup.client(deployment.broker.port, "site-a")
    try:
        acl.write_text(original.replace(line, ""))
        deployment.broker.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(
            lambda: publish_rc(client, t.telemetry("site-a", "x"), b"") == NOT_AUTHORIZED,
            30,
            "the reloaded ACL",
            step=0.2,
        )
        rc, checks, text = _doctor(_config(deployment, "acl"))
        assert rc == 1 and _failing(checks) == ["acl"], text
        assert "publish telemetry" in checks["acl"][1] and "not authorized" in checks["acl"][1]
    finally:
        acl.write_text(original)
        deployment.broker.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(
            lambda: publish_rc(client, t.telemetry("site-a", "x"), b"") == 0,
            30,
            "the restored ACL",
            step=0.2,
        )


def test_invalid_config_fails_config_and_skips_the_rest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('site_id = "Not Valid"\n')
    rc, checks, text = _doctor(bad)
    assert rc == 1 and _failing(checks) == ["config"], text
    assert all(state == "skip" for name, (state, _) in checks.items() if name != "config")


def test_training_dependencies_are_checked_without_importing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from site_node.cli.doctor import run_checks

    def results(**settings: Any) -> dict[str, Any]:
        config = tmp_path / "train.toml"
        base = {"site_id": "site-t", "data_dir": str(tmp_path / "d")}
        config.write_text(to_toml({**base, "mqtt": {"port": free_port()}, **settings}))
        return {r.name: r for r in run_checks(config, 1.0, echo=lambda _line: None)}

    assert results()["training"].state == "skip"  # no [training] table
    assert results(training={"approval": "manual"})["training"].state == "ok"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    got = results(training={"approval": "manual"})
    assert got["training"].state == "FAIL" and "torch missing" in got["training"].detail
    # find_spec only: a doctor run with [training] imports neither torch nor syft
    code = (
        "import sys; from pathlib import Path; from site_node.cli.doctor import run_checks; "
        f"r = run_checks(Path({str(tmp_path / 'train.toml')!r}), 1.0, echo=lambda _l: None); "
        "assert [c.state for c in r if c.name == 'training'] == ['ok'], r; "
        "assert not {'torch', 'syft'} & set(sys.modules), 'imported'"
    )
    monkeypatch.undo()
    results(training={"approval": "manual"})
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_help_explains_the_publish_probe() -> None:
    out = subprocess.run(
        [str(SITE_BIN), "doctor", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for words in ("PUBACK 135", "3.1.1", "WARN", "--while-running", "Example:"):
        assert words in out.stdout


# --- MQTT 3.1.1 brokers: no reason codes, so the probe must come back -------------------


@pytest.mark.parametrize("kind", ["nats", "rabbit"])
def test_on_311_brokers_the_acl_probe_is_proven_by_its_echo_or_named_denied(
    kind: str, tmp_path: Path
) -> None:
    prefix = "fedmq/v1"
    deny = {"publish": {"deny": ["fedmq.v1.site.site-a.telemetry.>"]}}
    users: dict[str, dict[str, object]] = {
        "site-a": {"password": "pw", "permissions": deny},
        "site-b": {"password": "pw"},
    }
    ctx = nats_broker(tmp_path / kind, users=users) if kind == "nats" else None
    with ctx or rabbitmq_broker(tmp_path / kind) as broker:
        if not isinstance(broker, NatsBroker):
            only_status = r"^fedmq\.v1\.site\.site-a\.status$"
            broker.add_user("site-a", "pw", topic_write=only_status, topic_read=".*")
            broker.add_user("site-b", "pw")
        serve = Coordinator(tmp_path / "c.db", broker.port, prefix).start()
        try:
            wait_for(lambda: "connected to" in serve.log_text(), 90, "serve connected")

            def config(site: str) -> Path:
                path = tmp_path / f"{site}.toml"
                mqtt = {"port": broker.port, "prefix": prefix, "username": site, "password": "pw"}
                path.write_text(
                    to_toml({"site_id": site, "data_dir": str(tmp_path / site), "mqtt": mqtt})
                )
                return path

            rc, checks, text = _doctor(config("site-b"))
            assert rc == 0 and _failing(checks) == [], text
            assert checks["connack"] == ("ok", "accepted as site-b (MQTT 3.1.1)"), text
            assert "its probe came back" in checks["acl"][1], text
            rc, checks, text = _doctor(config("site-a"))
            assert rc == 1 and _failing(checks) == ["acl"], text
            assert "denied: publish telemetry" in checks["acl"][1]
        finally:
            serve.stop()


# --- with the site daemon running ---------------------------------------------------------


def test_running_daemon_skips_broker_checks_unless_while_running_then_clock_from_acks(
    broker: Broker, tmp_path: Path, make_site: Callable[..., SiteProc]
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    serve = Coordinator(tmp_path / "c.db", broker.port, prefix).start()
    try:
        serve.wait_ready(60)
        site = make_site(broker.port, prefix, site_id="doc-live", rate_hz=50.0)
        site.wait_log("connected to", 60)
        rc, checks, text = _doctor(site.config)
        assert rc == 0, text
        assert checks["connack"][0] == "skip" and "daemon is running" in checks["connack"][1]
        assert checks["acl"] == ("skip", "needs connack")
        out = subprocess.run(
            [str(SITE_BIN), "doctor", "--config", str(site.config), "--while-running"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=site.workdir,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        clock = next(x for x in out.stdout.splitlines() if x.split()[1] == "clock")
        assert clock.startswith("ok") and "against the coordinator (an ack" in clock, clock
        assert site.alive()
    finally:
        serve.stop()
