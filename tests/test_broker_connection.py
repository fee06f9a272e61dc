"""One way both daemons log in to the broker (``fedmq_runtime.broker_connection``): the
same TLS rules for the site's and the coordinator's paho clients, refusals in one line."""

from __future__ import annotations

import logging
import queue
import ssl
from pathlib import Path
from typing import Any

import pytest

from coordinator.admin.dev_ca import CertificateAuthority
from coordinator.bus import Bus
from fedmq_runtime.broker_connection import connection_options
from fedmq_runtime.settings import MqttSettings, SettingsError
from site_node.bus import BusError, SiteBus


def _site_bus(settings: MqttSettings) -> SiteBus:
    return SiteBus(settings, "s1", lambda: (1, "t", b"x"), queue.Queue())


def _coordinator_bus(settings: MqttSettings) -> Bus:
    return Bus(settings, queue.SimpleQueue())


def _context(client: Any) -> ssl.SSLContext:
    """The TLS context paho will wrap the socket with (its own attribute)."""
    context: ssl.SSLContext = client._ssl_context
    return context


def _site_client(settings: MqttSettings) -> Any:
    from site_node.bus import _make_client

    return _make_client(settings, "s1", "5")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = CertificateAuthority.create()
    paths = {k: tmp_path / f"{k}.pem" for k in ("ca", "cert", "key")}
    ca.write_ca_cert(paths["ca"])
    ca.issue_client("s1", paths["cert"], paths["key"])
    return paths


def test_credentials_and_plain_tcp(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    login = connection_options(MqttSettings(username="site-a", password_file=secret))
    assert (login.username, login.password, login.tls) == ("site-a", "s3cret", None)
    assert connection_options(MqttSettings()).password is None


def test_both_buses_get_the_same_tls_rules(pki: dict[str, Path], caplog: Any) -> None:
    mtls = MqttSettings(tls=True, ca_file=pki["ca"], cert_file=pki["cert"], key_file=pki["key"])
    site = _context(_site_client(mtls))
    coordinator = _context(_coordinator_bus(mtls).client)
    for context in (site, coordinator):
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
        assert context.cert_store_stats()["x509_ca"] == 1  # our CA, not the system's
    caplog.set_level(logging.WARNING)
    insecure = mtls.model_copy(update={"tls_insecure": True})
    for context in (
        _context(_site_client(insecure)),
        _context(_coordinator_bus(insecure).client),
    ):
        assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED
    assert caplog.text.count("TLS hostname verification is DISABLED") == 2


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"tls_insecure": True}, "tls_insecure is set but mqtt.tls is not"),
        ({"tls": True, "ca_file": Path("/nonexistent/ca.pem")}, "TLS setup failed"),
        ({"username": "u", "password_file": Path("/nonexistent/pw")}, "password file"),
    ],
)
def test_settings_that_cannot_work_are_refused_by_both(fields: dict[str, Any], words: str) -> None:
    settings = MqttSettings(**fields)
    with pytest.raises(SettingsError, match=words):
        connection_options(settings)
    with pytest.raises(BusError, match=words):
        _site_bus(settings)
    # The coordinator used to ignore tls_insecure without tls, and raise raw OSErrors.
    with pytest.raises(SettingsError, match=words):
        _coordinator_bus(settings)
