"""The site on the shipped production broker config: TLS, password, ACL; secrets never logged."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas import Topics
from tests.helpers.broker import Broker
from tests.helpers.secure_broker import COORDINATOR_USER, SecureSetup, secure_setup
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)


@pytest.fixture
def setup(tmp_path: Path, prefix: str) -> Iterator[SecureSetup]:
    s = secure_setup(tmp_path / "secure", ["site-a"], prefix=prefix)
    yield s
    s.close()


@pytest.mark.slow
def test_tls_password_acl_connect_and_the_password_is_never_logged(
    setup: SecureSetup,
    broker_factory: Callable[..., Broker],
    tmp_path: Path,
    prefix: str,
    make_site: Callable[..., SiteProc],
) -> None:
    broker = broker_factory(config_text=setup.config_text)
    password = setup.password("site-a")
    secret = tmp_path / "site-password"
    secret.write_text(password + "\n")
    mqtt = {
        "host": "localhost",
        "tls": True,
        "ca_file": setup.tls()["ca_certs"],
        "username": "site-a",
        "password_file": str(secret),
    }
    watcher = setup.client(broker.port, COORDINATOR_USER)
    t = Topics(prefix)
    watcher.subscribe(f"{prefix}/#")
    site = make_site(broker.port, prefix, mqtt=mqtt)
    status = watcher.expect(lambda m: m.topic == t.status("site-a"), timeout=20)
    assert json.loads(status.payload)["state"] == "online"
    # Telemetry passes the ACL (the site writes only under its own topics).
    watcher.expect(lambda m: m.topic == t.telemetry("site-a", "counter"), timeout=10)
    shown = site.cli("run", "--print-config")
    assert shown.returncode == 0 and password not in shown.stdout
    assert json.loads(shown.stdout)["mqtt"]["tls"] is True
    assert site.terminate() == 0
    log = site.log_text()
    assert "connected to localhost" in log and password not in log
