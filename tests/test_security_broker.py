"""The shipped production configs on a real Mosquitto: authentication, ACL, TLS, mTLS.

Every denied publish is proven twice: the MQTT 5 PUBACK carries 135 "not authorized",
and a coordinator subscribed to ``P/#`` (full rights) never sees it, while a permitted
publish sent afterwards on the same connection does arrive (MQTT keeps per-connection
order, so a leaked denied message would have arrived first).
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.admin.broker_init import add_site
from coordinator.admin.dev_ca import CertificateAuthority
from schemas import Topics
from tests.helpers.broker import Broker
from tests.helpers.mqtt import TestClient
from tests.helpers.secure_broker import (
    COORDINATOR_USER,
    SecureSetup,
    publish_rc,
    secure_setup,
    subscribe_rc,
)
from tests.helpers.wait import wait_for

NOT_AUTHORIZED = 135
GRANTED_QOS1 = 1
SITES = ["site-a", "site-b"]


@pytest.fixture
def setup(tmp_path: Path, prefix: str) -> Iterator[SecureSetup]:
    s = secure_setup(tmp_path, SITES, prefix=prefix)
    yield s
    s.close()


@pytest.fixture
def secure(setup: SecureSetup, broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory(config_text=setup.config_text)


def _coordinator_watching(setup: SecureSetup, b: Broker) -> TestClient:
    coord = setup.client(b.port, COORDINATOR_USER)
    assert subscribe_rc(coord, f"{setup.prefix}/#") == GRANTED_QOS1
    return coord


def test_anonymous_and_wrong_password_are_refused(setup: SecureSetup, secure: Broker) -> None:
    for user, password in [(None, None), ("site-a", "wrong"), ("nobody", "x")]:
        c = setup.client(secure.port, user, password=password)
        # Mosquitto 2.0 answers all three with CONNACK 135 "not authorized".
        assert getattr(c.connect_rc, "value", None) == NOT_AUTHORIZED, (user, c.connect_rc)
        assert not c.client.is_connected()
    # The generated password (PBKDF2 written by fedmq, not mosquitto_passwd) is accepted.
    ok = setup.client(secure.port, "site-a")
    assert getattr(ok.connect_rc, "value", None) == 0


def test_site_cannot_publish_outside_its_own_data_topics(
    setup: SecureSetup, secure: Broker
) -> None:
    t = Topics(setup.prefix)
    coord = _coordinator_watching(setup, secure)
    site_a = setup.client(secure.port, "site-a")
    denied = [
        t.telemetry("site-b", "d1"),
        t.status("site-b"),
        t.registration("site-b"),
        t.job_result("site-b", "j1"),
        t.cmd("site-a", "train"),
        t.cmd("site-b", "train"),
        t.ack("site-a"),
        t.ack("site-b"),
        t.coordinator_status(),
        f"{setup.prefix}/site/site-a/other",
        f"{setup.prefix}/site/site-a/telemetry/d1/deeper",
        "elsewhere/topic",
    ]
    for topic in denied:
        assert publish_rc(site_a, topic, b"x") == NOT_AUTHORIZED, topic
    allowed = [
        t.status("site-a"),
        t.registration("site-a"),
        t.heartbeat("site-a"),
        t.telemetry("site-a", "d1"),
        t.job_status("site-a", "j1"),
        t.job_result("site-a", "j1"),
    ]
    for topic in allowed:
        assert publish_rc(site_a, topic, b"ok") == 0, topic
    seen = [m.topic for m in coord.collect(timeout=1.0)]
    assert seen == allowed


def test_site_reads_only_its_own_cmd_ack_and_coordinator_status(
    setup: SecureSetup, secure: Broker
) -> None:
    t = Topics(setup.prefix)
    coord = setup.client(secure.port, COORDINATOR_USER)
    site_a = setup.client(secure.port, "site-a")
    # Mosquitto 2.0's acl_file checks reads at delivery, not at SUBSCRIBE: the SUBACK for
    # another site's commands is "granted" and nothing is ever delivered. If a newer
    # Mosquitto answers 135 here instead, that is stricter; update this assertion.
    assert subscribe_rc(site_a, t.site_commands("site-b")) == GRANTED_QOS1
    assert subscribe_rc(site_a, f"{setup.prefix}/#") == GRANTED_QOS1
    for topic in [t.cmd("site-b", "train"), t.ack("site-b"), t.telemetry("site-b", "d")]:
        assert publish_rc(coord, topic, b"secret") == 0
    mine = [t.cmd("site-a", "ping"), t.ack("site-a"), t.coordinator_status()]
    for topic in mine:
        assert publish_rc(coord, topic, b"for-a") == 0
    got = [m.topic for m in site_a.collect(timeout=1.0)]
    assert sorted(set(got)) == sorted(mine)


def test_weights_chunk_passes_and_oversized_is_not_relayed(
    setup: SecureSetup, secure: Broker
) -> None:
    t = Topics(setup.prefix)
    coord = _coordinator_watching(setup, secure)
    site_a = setup.client(secure.port, "site-a")
    chunk = b"A" * (350 * 1024)  # a 256 KiB weights chunk as base64 JSON
    assert publish_rc(site_a, t.job_result("site-a", "j1"), chunk) == 0
    site_a.publish(t.job_result("site-a", "j2"), b"B" * (1024 * 1024 + 1), qos=0)
    got = coord.collect(timeout=1.0)
    assert [(m.topic, len(m.payload)) for m in got] == [(t.job_result("site-a", "j1"), len(chunk))]


@pytest.mark.slow
def test_added_site_connects_after_sighup(setup: SecureSetup, secure: Broker) -> None:
    # Connected first: a SIGHUP that arrives before mosquitto installs its handler (the
    # port opens slightly earlier) would terminate it.
    coord = _coordinator_watching(setup, secure)
    add_site(setup.deploy, "site-c")
    secure.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    site_c = None
    for _ in range(50):  # the reload is asynchronous
        site_c = setup.client(secure.port, "site-c")
        if getattr(site_c.connect_rc, "value", None) == 0:
            break
    assert site_c is not None and getattr(site_c.connect_rc, "value", None) == 0
    t = Topics(setup.prefix)
    assert publish_rc(site_c, t.telemetry("site-a", "d"), b"x") == NOT_AUTHORIZED
    assert publish_rc(site_c, t.telemetry("site-c", "d"), b"x") == 0
    assert [m.topic for m in coord.collect(timeout=1.0)] == [t.telemetry("site-c", "d")]


def test_client_trusting_another_ca_refuses_the_broker(
    setup: SecureSetup, secure: Broker, tmp_path: Path
) -> None:
    other = CertificateAuthority.create("another CA")
    other.write_ca_cert(tmp_path / "other-ca.crt")
    c = setup.client(
        secure.port, "site-a", tls={"ca_certs": str(tmp_path / "other-ca.crt")}, connect=False
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        c.connect()


# --- mutual TLS ---------------------------------------------------------------------------


@pytest.fixture
def mtls_setup(tmp_path: Path, prefix: str) -> Iterator[SecureSetup]:
    s = secure_setup(tmp_path, SITES, prefix=prefix, mtls=True)
    yield s
    s.close()


def _assert_refused(client: TestClient) -> None:
    # With TLS 1.3 the server checks the client certificate after the client considers
    # the handshake done, so the refusal shows as a closed connection without CONNACK.
    with contextlib.suppress(ssl.SSLError, OSError, AssertionError):
        client.connect(timeout=2)
    assert client.connect_rc is None
    assert not client.client.is_connected()


def test_mtls_refuses_missing_or_foreign_client_certificates(
    mtls_setup: SecureSetup, broker_factory: Callable[..., Broker], tmp_path: Path
) -> None:
    b = broker_factory(config_text=mtls_setup.config_text)
    # A valid password but no certificate: the handshake fails.
    _assert_refused(mtls_setup.client(b.port, "site-a", connect=False))
    # A client certificate with CN=site-a from another CA: refused too.
    other = CertificateAuthority.create("another CA")
    other.issue_client("site-a", tmp_path / "f.crt", tmp_path / "f.key")
    tls = mtls_setup.tls() | {
        "certfile": str(tmp_path / "f.crt"),
        "keyfile": str(tmp_path / "f.key"),
    }
    _assert_refused(mtls_setup.client(b.port, None, tls=tls, connect=False))


def test_mtls_certificate_cn_is_the_username_for_the_acl(
    mtls_setup: SecureSetup, broker_factory: Callable[..., Broker]
) -> None:
    b = broker_factory(config_text=mtls_setup.config_text)
    t = Topics(mtls_setup.prefix)
    coord = mtls_setup.client(b.port, COORDINATOR_USER, cert=True)
    assert subscribe_rc(coord, f"{mtls_setup.prefix}/#") == GRANTED_QOS1
    # No password at all; and a claimed username is ignored in favour of the CN.
    site_a = mtls_setup.client(b.port, None, cert=False, tls=mtls_setup.tls("site-a", cert=True))
    assert publish_rc(site_a, t.telemetry("site-a", "d"), b"x") == 0
    # The impostor's CN is site-a too, so it gets the same client id: one at a time.
    clients = [
        lambda: site_a,
        lambda: mtls_setup.client(
            b.port, COORDINATOR_USER, password="x", tls=mtls_setup.tls("site-a", cert=True)
        ),
    ]
    for connect in clients:
        client = connect()
        assert getattr(client.connect_rc, "value", None) == 0
        assert publish_rc(client, t.cmd("site-b", "train"), b"x") == NOT_AUTHORIZED
        assert publish_rc(client, t.telemetry("site-b", "d"), b"x") == NOT_AUTHORIZED
        client.close()
    assert publish_rc(coord, t.cmd("site-a", "ping"), b"x") == 0
    got = [m.topic for m in coord.collect(timeout=1.0)]
    assert got == [t.telemetry("site-a", "d"), t.cmd("site-a", "ping")]


@pytest.mark.slow
def test_retained_state_survives_kill_9_after_autosave(setup: SecureSetup, secure: Broker) -> None:
    """autosave_interval 10: a crash loses seconds, not the default half hour."""
    t = Topics(setup.prefix)
    coord = setup.client(secure.port, COORDINATOR_USER)
    assert publish_rc(coord, t.coordinator_status(), b"online", retain=True) in (0, 16)
    acked_at = time.time()  # the broker holds the message now; the next autosave writes it
    db = setup.root / "broker-data" / "mosquitto.db"
    wait_for(lambda: db.exists() and db.stat().st_mtime >= acked_at, 60, "an autosave")
    secure.kill()
    secure.start()
    site_a = setup.client(secure.port, "site-a").subscribe(t.coordinator_status())
    got = site_a.expect(lambda m: m.topic == t.coordinator_status(), timeout=5)
    assert got.retain and got.payload == b"online"
