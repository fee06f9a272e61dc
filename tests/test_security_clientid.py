"""Client ids are bound to usernames on the shipped broker configs: no session takeover.

MQTT lets a new connection with a client id already in use disconnect the old one, which
also publishes the old one's Last Will. Without ``use_username_as_clientid`` any
authenticated account (here ``site-b``) could knock ``fedmq serve`` (client id
``fedmq-coordinator``) or another site offline. Everything runs on a real Mosquitto with
the shipped mosquitto.conf / mtls.conf and `fedmq broker init --tls` output, only ports
and paths substituted (tests/helpers/secure_broker.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas import CoordinatorStatus, SiteStatus, Topics, encode
from tests.helpers.broker import Broker
from tests.helpers.mqtt import TestClient
from tests.helpers.secure_broker import COORDINATOR_USER, SecureSetup, secure_setup

SITES = ["site-a", "site-b"]
COORDINATOR_CLIENT_ID = "fedmq-coordinator"  # what `fedmq serve` connects with


class Victim:
    """A connected client that records every disconnect it suffers."""

    def __init__(self, setup: SecureSetup, port: int, user: str, client_id: str, mtls: bool):
        password = None if mtls else setup.password(user)
        self.c = TestClient(
            port, client_id=client_id, username=user, password=password,
            tls=setup.tls(user, cert=mtls),
        )  # fmt: skip
        self.disconnects = 0
        self.lock = threading.Lock()
        self.c.client.on_disconnect = self._on_disconnect

    def _on_disconnect(self, *_args: object) -> None:
        with self.lock:
            self.disconnects += 1


@pytest.fixture(params=[False, True], ids=["password", "mtls"])
def mtls(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def setup(tmp_path: Path, prefix: str, mtls: bool) -> Iterator[SecureSetup]:
    s = secure_setup(tmp_path, SITES, prefix=prefix, mtls=mtls)
    yield s
    s.close()


def test_another_account_cannot_take_over_coordinator_or_site_sessions(
    setup: SecureSetup, broker_factory: Callable[..., Broker], mtls: bool
) -> None:
    b = broker_factory(config_text=setup.config_text)
    t = Topics(setup.prefix)
    offline_coord = encode(CoordinatorStatus(session=1, state="offline"))
    offline_site = encode(SiteStatus(site="site-a", session=1, state="offline"))
    # The coordinator as `fedmq serve` connects, with its Will; it watches site statuses.
    coord = Victim(setup, b.port, COORDINATOR_USER, COORDINATOR_CLIENT_ID, mtls)
    coord.c.client.will_set(t.coordinator_status(), offline_coord, qos=1, retain=True)
    coord.c.connect().subscribe(t.status("site-a")).subscribe(t.telemetry("site-a", "d1"))
    # site-a as its daemon connects (client id = site id), with its Will; it watches the
    # coordinator's status and its own commands.
    site_a = Victim(setup, b.port, "site-a", "site-a", mtls)
    site_a.c.client.will_set(t.status("site-a"), offline_site, qos=1, retain=True)
    site_a.c.connect().subscribe(t.coordinator_status()).subscribe(t.cmd("site-a", "ping"))
    assert getattr(coord.c.connect_rc, "value", None) == 0
    assert getattr(site_a.c.connect_rc, "value", None) == 0

    for attempt in range(3):
        for stolen in (COORDINATOR_CLIENT_ID, "site-a"):
            # site-b's valid credentials, another account's client id.
            attacker = TestClient(
                b.port, client_id=stolen, username="site-b",
                password=None if mtls else setup.password("site-b"),
                tls=setup.tls("site-b", cert=mtls),
            ).connect()  # fmt: skip
            assert getattr(attacker.connect_rc, "value", None) == 0  # it may connect...
            # ... but as itself. Both victims still talk, in order after the attempt: a
            # Will fired by a takeover would have reached the watchers first.
            marker = f"{attempt}-{stolen}".encode()
            coord.c.publish(t.cmd("site-a", "ping"), marker)
            site_a.c.publish(t.telemetry("site-a", "d1"), marker)
            got_site = site_a.c.expect(lambda m: True)  # nothing retained on these topics
            got_coord = coord.c.expect(lambda m: True)
            assert got_site.payload == marker, f"site-a saw {got_site} after {stolen!r}"
            assert got_coord.payload == marker, f"coordinator saw {got_coord} after {stolen!r}"
            attacker.close()
    assert (coord.disconnects, site_a.disconnects) == (0, 0)
    coord.c.close()
    site_a.c.close()
