"""``load_settings``: TOML < FEDMQ_ environment < flags; one-line errors; masked secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from fedmq_runtime.settings import MqttSettings, SettingsError, load_settings, masked


class DaemonSettings(BaseModel):
    """A daemon-shaped settings model: nested MQTT section plus top-level fields."""

    model_config = ConfigDict(extra="forbid")

    mqtt: MqttSettings = MqttSettings()
    db: Path = Path("fedmq.db")
    patience: float = 3.0


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fedmq.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_source() -> None:
    s = load_settings(DaemonSettings, env={})
    assert s == DaemonSettings()
    assert s.mqtt.host == "127.0.0.1" and s.mqtt.port == 1883


def test_precedence_toml_then_env_then_flags(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        'db = "from-toml.db"\npatience = 5.0\n[mqtt]\nhost = "toml-host"\nport = 1884\n'
        "keepalive = 40\n",
    )
    only_toml = load_settings(DaemonSettings, file=file, env={})
    assert only_toml.mqtt.host == "toml-host" and only_toml.mqtt.port == 1884
    assert only_toml.db == Path("from-toml.db") and only_toml.patience == 5.0

    env = {
        "FEDMQ_MQTT__HOST": "env-host",
        "FEDMQ_MQTT__PORT": "1885",
        "FEDMQ_PATIENCE": "7",
        "OTHER_MQTT__HOST": "ignored",
        "FEDMQ_UNRELATED": "ignored: not a field of this model",
    }
    with_env = load_settings(DaemonSettings, file=file, env=env)
    assert with_env.mqtt.host == "env-host" and with_env.mqtt.port == 1885
    assert with_env.patience == 7.0
    assert with_env.mqtt.keepalive == 40  # untouched TOML values survive the env layer
    assert with_env.db == Path("from-toml.db")

    flags = {"mqtt": {"host": "flag-host", "port": None}, "db": None, "patience": 9.5}
    with_flags = load_settings(DaemonSettings, file=file, env=env, flags=flags)
    assert with_flags.mqtt.host == "flag-host"
    assert with_flags.mqtt.port == 1885  # a None flag means "not given"
    assert with_flags.db == Path("from-toml.db") and with_flags.patience == 9.5
    assert with_flags.mqtt.keepalive == 40


def test_real_process_environment_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMQ_MQTT__HOST", "broker.plant")
    monkeypatch.setenv("FEDMQ_MQTT__PREFIX", "acme/detroit/pdm/fedmq/v1")
    s = load_settings(DaemonSettings)
    assert s.mqtt.host == "broker.plant" and s.mqtt.prefix == "acme/detroit/pdm/fedmq/v1"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[mqtt\nhost = 1", "invalid TOML"),
        ('[mqtt]\nhost = "a"\nhost = "b"\n', "invalid TOML"),
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ('[mqtt]\nport = "many"\n', "mqtt.port"),
        ('[mqtt]\nprefix = "acme corp/v1"\n', "mqtt.prefix"),
        ('[mqtt]\nprotocol = "4"\n', "mqtt.protocol"),
        ('[mqtt]\nhots = "typo"\n', "mqtt.hots"),
        ('patience = "soon"\n', "patience"),
    ],
)
def test_bad_toml_or_value_is_one_line_settings_error(
    tmp_path: Path, text: str, where: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(DaemonSettings, file=write(tmp_path, text), env={})
    message = str(info.value)
    assert where in message
    assert "\n" not in message


def test_bad_env_value_names_the_setting() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(DaemonSettings, env={"FEDMQ_MQTT__PORT": "not-a-port"})
    assert "mqtt.port" in str(info.value) and "\n" not in str(info.value)


def test_missing_file_is_one_line_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(DaemonSettings, file=tmp_path / "absent.toml", env={})
    assert "absent.toml" in str(info.value) and "\n" not in str(info.value)


def test_masked_hides_passwords(tmp_path: Path) -> None:
    secret = "s3cr3t-Pa55"
    s = load_settings(
        DaemonSettings,
        file=write(tmp_path, f'[mqtt]\nusername = "site-1"\npassword = "{secret}"\n'),
        env={},
    )
    assert s.mqtt.resolved_password() == secret
    shown = masked(s)
    assert shown["mqtt"]["password"] == "***"
    assert shown["mqtt"]["username"] == "site-1"
    assert secret not in json.dumps(shown)  # JSON-ready, secret-free
    assert secret not in repr(s) and secret not in str(s)
    assert masked(DaemonSettings())["mqtt"]["password"] is None


def test_password_file_is_read_and_missing_one_is_a_settings_error(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\nignored second line\n")
    s = load_settings(MqttSettings, flags={"password_file": pw}, env={})
    assert s.resolved_password() == "from-file"
    missing = load_settings(MqttSettings, flags={"password_file": tmp_path / "no"}, env={})
    with pytest.raises(SettingsError):
        missing.resolved_password()
