"""Settings shared by both daemons, and the one way settings are layered.

Precedence, low to high: defaults, a TOML file, ``FEDMQ_...`` environment variables,
command-line flags. Nested fields use ``__`` in environment names, e.g.
``FEDMQ_MQTT__HOST=broker.plant`` sets ``mqtt.host``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from schemas.topics import DEFAULT_PREFIX, validate_prefix

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ENV_PREFIX", "MqttSettings", "SettingsError", "load_settings", "masked"]

ENV_PREFIX = "FEDMQ_"
T = TypeVar("T", bound=BaseModel)


class SettingsError(ValueError):
    """Settings could not be read or are invalid (one line, for the CLI)."""


class MqttSettings(BaseModel):
    """How to reach the broker."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    # "auto": MQTT 5, or 3.1.1 when the broker refuses 5 (fedmq_runtime.mqtt_protocol).
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive: int = Field(default=30, ge=5, le=3600)
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    max_payload: int = Field(default=1024 * 1024, ge=1024)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        validate_prefix(value)
        return value

    def resolved_password(self) -> str | None:
        """The password, from ``password`` or else the first line of ``password_file``."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise SettingsError(f"cannot read password file {self.password_file}") from exc
        return None


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            return
        tree = node
    tree[path[-1]] = value


def _env_layer(model: type[BaseModel], env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path[0] in model.model_fields:
            _set_path(layer, path, value)
    return layer


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    model: type[T],
    file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """Build ``model`` from a TOML file, the environment and flags (None flags are unset).

    Raises:
        SettingsError: the file is unreadable or a value is invalid.
    """
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(Path(file).read_text())
        except OSError as exc:
            raise SettingsError(f"cannot read config {file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"invalid TOML in {file}: {exc}") from exc
    data = _merge(data, _env_layer(model, os.environ if env is None else env))
    data = _merge(data, flags or {})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SettingsError(f"invalid setting {where}: {first['msg']}") from exc


def masked(settings: BaseModel) -> dict[str, Any]:
    """Settings as a JSON-ready dict with every secret replaced by ``"***"``."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "***"
        if isinstance(value, BaseModel):
            return {k: walk(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return walk(settings)  # type: ignore[no-any-return]
