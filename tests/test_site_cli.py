"""The ``fedmq-site`` commands, run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import tomllib

from schemas import Topics
from site_node.cli import COMMANDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from site_node.outbox import read_stats
from site_node.settings import SiteSettings
from tests.helpers.broker import Broker
from tests.helpers.mqtt import TestClient, wait_for
from tests.helpers.site_proc import SITE_BIN, SiteProc, make_site_fixture  # noqa: F401 (fixture)

MINE = ("run", "init", "status", "deregister")


def fedmq_site(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SITE_BIN), *args], capture_output=True, text=True, timeout=30, env=env
    )


@pytest.mark.parametrize("name", MINE)
def test_every_command_has_help_with_an_example(name: str) -> None:
    assert name in COMMANDS
    out = fedmq_site(name, "--help")
    assert out.returncode == 0 and "Example:" in out.stdout


def test_init_writes_a_config_that_loads(tmp_path: Path) -> None:
    out = fedmq_site("init", "--site-id", "plant-7")
    assert out.returncode == 0
    settings = SiteSettings.model_validate(tomllib.loads(out.stdout))
    assert settings.site_id == "plant-7" and settings.devices[0].source == "system"
    target = tmp_path / "site.toml"
    assert fedmq_site("init", "--out", str(target)).returncode == 0
    again = fedmq_site("init", "--out", str(target))
    assert again.returncode != 0 and "exists" in again.stderr


def test_print_config_layers_env_and_flags_and_masks_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        'site_id = "a1"\n[mqtt]\nhost = "file-host"\nport = 1000\npassword = "hunter2"\n'
    )
    env = {"FEDMQ_MQTT__HOST": "env-host", "FEDMQ_OUTBOX__MAX_ROWS": "1234", "PATH": "/usr/bin"}
    out = fedmq_site("run", "-c", str(cfg), "--port", "2000", "--print-config", env=env)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["mqtt"]["host"] == "env-host" and shown["mqtt"]["port"] == 2000
    assert shown["outbox"]["max_rows"] == 1234
    assert shown["mqtt"]["password"] == "***" and "hunter2" not in out.stdout


def test_bad_config_is_one_line_with_usage_exit_code(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('site_id = "Bad Id"\n')
    out = fedmq_site("run", "-c", str(cfg))
    assert out.returncode == 2
    assert "site_id" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_status_works_with_daemon_and_broker_down(
    own_broker: Broker, prefix: str, make_site: Callable[..., SiteProc]
) -> None:
    site = make_site(own_broker.port, prefix, rate_hz=50.0)
    wait_for(lambda: read_stats(site.data_dir / "outbox.db").depth >= 20, 20, "rows")
    live = site.status()
    assert live["running"] and live["connected"] and live["session"] >= 1
    site.kill()
    own_broker.stop()
    info = site.status()
    assert not info["running"] and not info["connected"]
    assert info["session"] == live["session"] and info["outbox_depth"] >= 20
    assert info["oldest_unacked_age_s"] is not None and info["last_acked"] == 0
    text = site.cli("status")
    assert text.returncode == 0 and "not running" in text.stdout and "outbox depth" in text.stdout


def test_deregister_clears_retained_status_and_registration(
    broker: Broker,
    prefix: str,
    make_site: Callable[..., SiteProc],
    mqtt_client: Callable[..., TestClient],
) -> None:
    t = Topics(prefix)
    site = make_site(broker.port, prefix)
    sub = mqtt_client().subscribe(t.registration("site-a"))
    sub.expect(lambda m: m.payload != b"", timeout=15)
    assert site.terminate() == 0
    out = site.cli("deregister")
    assert out.returncode == 0, out.stderr
    late = mqtt_client().subscribe(t.status("site-a")).subscribe(t.registration("site-a"))
    assert [m for m in late.collect(timeout=0.7) if m.retain] == []


def test_deregister_with_broker_down_exits_4(tmp_path: Path) -> None:
    from tests.helpers.broker import free_port

    out = fedmq_site("deregister", "--site-id", "x1", "--port", str(free_port()))
    assert out.returncode == 4 and "unreachable" in out.stderr


@pytest.mark.parametrize(
    ("mqtt", "needle"),
    [
        ('tls = true\nca_file = "/nonexistent/ca.crt"', "TLS setup failed"),
        ("tls_insecure = true", "tls_insecure is set but mqtt.tls is not"),
        ('username = "u"\npassword_file = "/nonexistent/pw"', "cannot read password file"),
    ],
)
def test_bad_connection_settings_fail_at_start_not_later(
    tmp_path: Path, mqtt: str, needle: str
) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'site_id = "a1"\ndata_dir = "{tmp_path / "d"}"\n[mqtt]\n{mqtt}\n')
    out = fedmq_site("run", "-c", str(cfg))
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr
