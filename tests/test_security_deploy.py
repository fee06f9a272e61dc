"""docker-compose.yml, Dockerfile and the bridge example: they refer to real files.

Docker does not run here, so the compose file is checked statically: it parses, every
bind-mount source exists (``./deploy/...`` after the `fedmq broker init` command its
header documents), and every path inside the mounted configs (mosquitto.conf, the
credentials files) resolves through those mounts to a generated file.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from coordinator.admin.broker_init import init_broker
from coordinator.admin.passwords import (
    generate_password,
    hash_password,
    read_password_file,
    write_password_file,
)
from tests.helpers.broker import REPO, Broker, dev_config
from tests.helpers.mqtt import TestClient, wait_for
from tests.helpers.secure_broker import secure_setup, stay_user_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture
def deployed(tmp_path: Path, compose: dict) -> Path:
    """A copy of the compose project root with ./deploy generated as documented."""
    header = COMPOSE.read_text()
    assert "--tls --hosts mosquitto" in header and "--runtime-dir /etc/fedmq" in header
    sites = sorted(n for n in compose["services"] if n.startswith("site-"))
    init_broker(
        tmp_path / "deploy", sites, tls=True, hosts=["mosquitto"], runtime_dir=Path("/etc/fedmq")
    )
    return tmp_path


def _mounts(service: dict) -> list[tuple[str, str]]:
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out.append((source, target))
    return out


def _host_path(source: str, deployed: Path) -> Path:
    rel = source.removeprefix("./")
    return (deployed if rel.startswith("deploy/") else REPO) / rel


def _resolve(container_path: str, mounts: list[tuple[str, str]], deployed: Path) -> Path:
    """Where a path inside a container lives on the host, through the bind mounts."""
    for source, target in sorted(mounts, key=lambda m: -len(m[1])):
        if source.startswith(".") and (
            container_path == target or container_path.startswith(target + "/")
        ):
            return _host_path(source, deployed) / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not inside any bind mount {mounts}")


def test_compose_services_and_volumes(compose: dict) -> None:
    services = compose["services"]
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    sites = [n for n in services if n.startswith("site-")]
    assert len(sites) == 3
    for name in ["coordinator", *sites]:
        svc = services[name]
        assert svc["build"] == "." and svc["depends_on"] == ["mosquitto"]
        cmd = svc["command"]
        assert (cmd[0] == "serve") if name == "coordinator" else (cmd[0] == "run")
        named = [s for s, _t in _mounts(svc) if not s.startswith(".")]
        assert named and all(v in compose["volumes"] for v in named)
    assert services["coordinator"].get("entrypoint") is None  # the image's `fedmq`
    assert all(services[s]["entrypoint"] == ["fedmq-site"] for s in sites)
    mosquitto_named = [s for s, t in _mounts(services["mosquitto"]) if t == "/mosquitto/data"]
    assert mosquitto_named and mosquitto_named[0] in compose["volumes"]


def test_every_bind_mount_and_config_path_exists(compose: dict, deployed: Path) -> None:
    for name, svc in compose["services"].items():
        mounts = _mounts(svc)
        for source, _target in mounts:
            if source.startswith("."):
                assert _host_path(source, deployed).exists(), (name, source)
        if name == "mosquitto":
            conf = _resolve("/mosquitto/config/mosquitto.conf", mounts, deployed)
            paths = re.findall(
                r"^\s*(?:cafile|certfile|keyfile|password_file|acl_file)\s+(\S+)",
                conf.read_text(),
                re.M,
            )
            assert len(paths) == 5
            for path in paths:
                assert _resolve(path, mounts, deployed).is_file(), path
            continue
        cmd = svc["command"]
        config = _resolve(cmd[cmd.index("--config") + 1], mounts, deployed)
        creds = tomllib.loads(config.read_text())
        mqtt = creds["mqtt"]
        assert mqtt["host"] == "mosquitto" and mqtt["port"] == 8883
        files = [mqtt["ca_file"], mqtt["cert_file"], mqtt["key_file"]]
        files.append(creds.get("coordinator_public_key_file") or creds["signing_key_file"])
        for path in files:
            assert _resolve(path, mounts, deployed).is_file(), (name, path)
        if name != "coordinator":
            assert creds["site_id"] == name


def test_dockerfile_copies_existing_paths_and_pins_python() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    copied = [m.split()[:-1] for m in re.findall(r"^COPY (.+)$", text, re.M)]
    assert copied
    for sources in copied:
        for src in sources:
            assert (REPO / src).exists(), src


def test_bridge_example_is_accepted_by_mosquitto(
    tmp_path: Path, broker_factory: Callable[..., Broker]
) -> None:
    """The example parses in a real broker (its remote is unreachable, which is fine)."""
    setup = secure_setup(tmp_path, ["site-a"])
    ca = setup.layout.broker / "tls" / "ca.crt"
    bridge = (REPO / "broker_config" / "bridge-plant.conf.example").read_text()
    assert "topic # both 1 acme/detroit/pdm/fedmq/v1/ fedmq/v1/" in bridge
    bridge = bridge.replace("/etc/mosquitto/certs/central-ca.crt", str(ca))
    bridge = bridge.replace("central-broker.example.com:8883", "127.0.0.1:9")
    b = broker_factory(
        config_text=dev_config(0).replace("listener 0 ", "listener {port} ")
        + bridge
        + stay_user_line()
    )
    wait_for(lambda: "Connecting bridge (step 2) fedmq-central" in b.log.read_text(), 5, "bridge")
    assert b.running
    log = b.log.read_text()
    # The CA file loaded and TLS was set up; only the (closed) remote port fails.
    assert "Unable to load" not in log and "Unknown configuration" not in log


def test_bridge_example_remaps_both_ways_over_tls(
    tmp_path: Path, broker_factory: Callable[..., Broker]
) -> None:
    """A plant broker with the example bridge, a central broker on the shipped TLS config."""
    central_setup = secure_setup(tmp_path / "central", ["site-a"], prefix="fedmq/v1")
    layout = central_setup.layout
    bridge_password = generate_password()
    entries = read_password_file(layout.passwd)
    entries["detroit-bridge"] = hash_password(bridge_password)
    write_password_file(layout.passwd, entries)
    with layout.acl.open("a") as acl:  # the central ACL block the example's comment asks for
        acl.write("\nuser detroit-bridge\ntopic readwrite fedmq/v1/site/site-a/#\n")
        acl.write("topic read fedmq/v1/coordinator/status\n")
    central = broker_factory(config_text=central_setup.config_text)
    bridge = (REPO / "broker_config" / "bridge-plant.conf.example").read_text()
    for old, new in [
        ("/etc/mosquitto/certs/central-ca.crt", str(layout.broker / "tls" / "ca.crt")),
        ("central-broker.example.com:8883", f"127.0.0.1:{central.port}"),
        ("remote_password CHANGE-ME", f"remote_password {bridge_password}"),
    ]:
        assert old in bridge
        bridge = bridge.replace(old, new)
    plant = broker_factory(
        config_text=dev_config(0).replace("listener 0 ", "listener {port} ")
        + bridge
        + stay_user_line()
    )
    coord = central_setup.client(central.port, "coordinator").subscribe("fedmq/v1/#")
    local = TestClient(plant.port).connect()
    try:
        local.subscribe("acme/detroit/pdm/fedmq/v1/site/site-a/cmd/#")
        plant_topic = "acme/detroit/pdm/fedmq/v1/site/site-a/telemetry/d1"
        # The bridge connects and subscribes asynchronously: publish until it carries one.
        for _ in range(40):
            local.publish(plant_topic, b"t")
            if coord.collect(timeout=0.25):
                break
        else:
            raise AssertionError("bridged telemetry never reached the central broker")
        coord.publish("fedmq/v1/site/site-a/cmd/ping", b"c")
        got = local.expect(lambda m: m.topic.endswith("/cmd/ping"), timeout=5)
        assert got.topic == "acme/detroit/pdm/fedmq/v1/site/site-a/cmd/ping"
    finally:
        local.close()
        central_setup.close()
