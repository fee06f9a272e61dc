"""A real Mosquitto on the SHIPPED production configs, with a generated deployment.

``secure_setup(root, sites)`` runs ``init_broker(..., tls=True)`` into ``root/deploy`` and
returns the text of broker_config/mosquitto.conf (or mtls.conf) adapted only by text
substitution: the TLS listener moves to ``{port}`` on loopback, the /mosquitto/... paths
point into ``root``, and ``user <current user>`` is appended so a broker started by root
does not drop to the ``mosquitto`` user that cannot enter pytest's 0700 temp dirs (the
eclipse-mosquitto image instead chowns /mosquitto at start). Start it with
``broker_factory(config_text=setup.config_text)``; connect with ``setup.client(...)``.

Example (an end-to-end test on TLS + ACL)::

    setup = secure_setup(tmp_path, ["site-a"], prefix=prefix)
    b = broker_factory(config_text=setup.config_text)
    site_toml = setup.credentials_file("site-a")     # site_id, pinned key, [mqtt]
    env = setup.env("site-a", b.port)                # FEDMQ_MQTT__PORT etc.
"""

from __future__ import annotations

import os
import pwd
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.admin.broker_init import COORDINATOR_USER, Layout, init_broker
from tests.helpers.broker import REPO, free_port
from tests.helpers.mqtt import TestClient, wait_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "COORDINATOR_USER",
    "SecureSetup",
    "publish_rc",
    "secure_config",
    "secure_setup",
    "stay_user_line",
    "subscribe_rc",
]

SHIPPED = REPO / "broker_config"


def _sub(text: str, old: str, new: str) -> str:
    # Fail loudly when the shipped config changes shape, rather than testing something else.
    if old not in text:
        raise AssertionError(f"shipped broker config no longer contains {old!r}")
    return text.replace(old, new)


def secure_config(
    deploy: Path, data_dir: Path, mtls: bool = False, plain_port: int | None = None
) -> str:
    """The shipped config pointed at ``deploy`` (from init_broker), listener on ``{port}``."""
    text = (SHIPPED / ("mtls.conf" if mtls else "mosquitto.conf")).read_text()
    text = _sub(text, "\nlistener 8883\n", "\nlistener {port} 127.0.0.1\n")
    text = _sub(text, "/mosquitto/config/fedmq/", f"{Layout(deploy).broker}/")
    text = _sub(text, "persistence_location /mosquitto/data/", f"persistence_location {data_dir}/")
    if plain_port is not None:
        text = _sub(text, "#listener 1883 127.0.0.1", f"listener {plain_port} 127.0.0.1")
    return text + stay_user_line()


def stay_user_line() -> str:
    """``user <current user>``: a broker started by root keeps access to 0700 temp dirs."""
    return f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"


@dataclass
class SecureSetup:
    """A generated deployment directory and the broker config that uses it."""

    root: Path
    deploy: Path
    prefix: str
    config_text: str
    plain_port: int | None = None
    clients: list[TestClient] = field(default_factory=list)

    @property
    def layout(self) -> Layout:
        return Layout(self.deploy)

    def node_dir(self, user: str) -> Path:
        return self.layout.coordinator if user == COORDINATOR_USER else self.layout.site(user)

    def credentials_file(self, user: str) -> Path:
        return self.node_dir(user) / "credentials.toml"

    def credentials(self, user: str) -> dict[str, Any]:
        """The parsed credentials.toml of a site or the coordinator."""
        return tomllib.loads(self.credentials_file(user).read_text())

    def password(self, user: str) -> str:
        return str(self.credentials(user)["mqtt"]["password"])

    def tls(self, user: str | None = None, cert: bool = False) -> dict[str, object]:
        """``tls_set`` kwargs trusting the generated CA; with ``cert``, ``user``'s cert."""
        out: dict[str, object] = {"ca_certs": str(self.layout.broker / "tls" / "ca.crt")}
        if cert:
            node = self.node_dir(user or COORDINATOR_USER) / "tls"
            out |= {"certfile": str(node / "client.crt"), "keyfile": str(node / "client.key")}
        return out

    def env(self, user: str, port: int) -> dict[str, str]:
        """Environment overrides for a fedmq daemon using ``user``'s credentials file."""
        return {"FEDMQ_MQTT__HOST": "127.0.0.1", "FEDMQ_MQTT__PORT": str(port)}

    def client(
        self,
        port: int,
        user: str | None,
        password: str | None = None,
        cert: bool = False,
        tls: dict[str, object] | None = None,
        connect: bool = True,
    ) -> TestClient:
        """An MQTT 5 TLS test client as ``user`` (its generated password by default)."""
        if user is not None and password is None and not cert:
            password = self.password(user)
        c = TestClient(
            port,
            username=user,
            password=password,
            tls=tls if tls is not None else self.tls(user, cert=cert),
        )
        self.clients.append(c)
        return c.connect() if connect else c

    def close(self) -> None:
        for c in self.clients:
            c.close()


def secure_setup(
    root: Path,
    sites: Sequence[str],
    prefix: str = "fedmq/v1",
    mtls: bool = False,
    plain: bool = False,
) -> SecureSetup:
    """Generate a TLS deployment for ``sites`` under ``root`` and its broker config."""
    deploy = root / "deploy"
    init_broker(deploy, list(sites), prefix=prefix, tls=True)
    data = root / "broker-data"
    data.mkdir(parents=True, exist_ok=True)
    plain_port = free_port() if plain else None
    text = secure_config(deploy, data, mtls=mtls, plain_port=plain_port)
    return SecureSetup(root, deploy, prefix, text, plain_port)


def publish_rc(client: TestClient, topic: str, payload: bytes, retain: bool = False) -> int:
    """Publish at QoS 1 and return the PUBACK reason code (MQTT 5: 135 = not authorized)."""
    codes: dict[int, int] = {}
    client.client.on_publish = lambda _c, _u, mid, rc, _p: codes.__setitem__(mid, rc.value)
    info = client.client.publish(topic, payload, qos=1, retain=retain)
    wait_for(lambda: info.mid in codes, 5, f"PUBACK for {topic}")
    return codes[info.mid]


def subscribe_rc(client: TestClient, topic: str) -> int:
    """Subscribe at QoS 1 and return the SUBACK reason code (1 = granted QoS 1)."""
    codes: dict[int, int] = {}
    client.client.on_subscribe = lambda _c, _u, mid, rcs, _p: codes.__setitem__(mid, rcs[0].value)
    _result, mid = client.client.subscribe(topic, 1)
    assert mid is not None
    wait_for(lambda: mid in codes, 5, f"SUBACK for {topic}")
    time.sleep(0.05)
    return codes[mid]
