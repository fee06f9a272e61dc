"""``fedmq serve`` with broker login settings that cannot work (TLS files that do not
load, ``tls_insecure`` without ``tls``, an unreadable password file): one line on stderr
and the usage exit code, no traceback; embedded, ``run`` raises ``SettingsError`` and
leaves the database closed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from coordinator.cli.serve import run
from coordinator.settings import CoordinatorSettings
from fedmq_runtime.cli import EXIT
from fedmq_runtime.settings import MqttSettings, SettingsError
from tests.helpers.coord_proc import fedmq

CASES = {
    "tls files": ('tls = true\nca_file = "{tmp}/missing-ca.pem"\n', "TLS setup failed"),
    "insecure without tls": ("tls_insecure = true\n", "tls_insecure is set but mqtt.tls is not"),
    "password file": (
        'username = "coordinator"\npassword_file = "{tmp}/missing.pw"\n',
        "cannot read password file",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_serve_refuses_login_settings_in_one_line(case: str, tmp_path: Path) -> None:
    body, message = CASES[case]
    toml = tmp_path / "coordinator.toml"
    toml.write_text("[mqtt]\nport = 1\n" + body.format(tmp=tmp_path))
    db = tmp_path / "c.db"
    proc = fedmq("serve", "--config", str(toml), "--db", str(db), "--no-http", check=False)
    assert proc.returncode == EXIT["usage"], proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_embedded_raises_settings_error_and_closes_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coordinator.store

    closed: list[bool] = []

    class Recorded(coordinator.store.SqliteStore):
        def close(self) -> None:
            closed.append(True)
            super().close()

    monkeypatch.setattr(coordinator.store, "SqliteStore", Recorded)
    settings = CoordinatorSettings(
        db=tmp_path / "c.db", mqtt=MqttSettings(port=1, tls_insecure=True)
    )
    with pytest.raises(SettingsError, match="tls_insecure"):
        run(settings, threading.Event())
    assert closed == [True]
