"""Typed settings of one site daemon, layered TOML < ``FEDMQ_...`` env < flags.

Built once at the CLI edge with :func:`load_site_settings` and passed down explicitly.
Nested fields use ``__`` in environment names: ``FEDMQ_MQTT__HOST``, ``FEDMQ_OUTBOX__MAX_ROWS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedmq_runtime.settings import MqttSettings, load_settings
from schemas import Location, PlantHierarchy, validate_site_id
from site_node.history.config import HistorySettings, check_site_history
from site_node.scoring.config import ScoringSettings
from site_node.sources import DeviceConfig
from site_node.training.jobs.config import TrainingSettings

__all__ = ["LogSettings", "OutboxSettings", "SiteSettings", "load_site_settings"]

_strict = ConfigDict(extra="forbid")


class OutboxSettings(BaseModel):
    """Bounds and pacing of the durable outbox."""

    model_config = _strict

    max_rows: int = Field(default=200_000, ge=10)
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    policy: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    # Re-send unacked rows this long after their last send (a broker may drop QoS 1
    # silently while both ends stay connected); well inside NATS' 30 s ack_wait budget.
    ack_timeout_s: float = Field(default=30.0, gt=0)
    # Replayed rows per second: live data keeps priority, history trickles in behind it.
    replay_rate: float = Field(default=2000.0, gt=0)
    # QoS 1 publishes allowed in flight in paho at once (mids wrap at 65,535).
    inflight_window: int = Field(default=1000, ge=1, le=20_000)
    # FULL survives power loss, NORMAL only process crashes (kill -9); WAL either way.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class LogSettings(BaseModel):
    """Where and how the daemon logs (stderr always)."""

    model_config = _strict

    file: Path | None = None
    format: Literal["text", "json"] = "text"
    verbose: bool = False


class SiteSettings(BaseModel):
    """Everything a site daemon needs; secrets stay SecretStr and are masked when shown."""

    model_config = _strict

    site_id: str
    data_dir: Path = Path("fedmq-site-data")
    name: str = Field(default="", max_length=200)
    hierarchy: PlantHierarchy = PlantHierarchy()
    location: Location | None = None
    labels: dict[str, str] = {}
    heartbeat_interval_s: float = Field(default=10.0, ge=0.5, le=3600)
    mqtt: MqttSettings = MqttSettings()
    outbox: OutboxSettings = OutboxSettings()
    devices: list[DeviceConfig] = []
    # Telemetry batching per device: by count and by time window.
    batch_max_samples: int = Field(default=100, ge=1, le=10_000)
    batch_max_wait_s: float = Field(default=1.0, gt=0, le=3600)
    coordinator_public_key_file: Path | None = None
    # Seconds of clock difference tolerated when checking a command's expiry.
    command_clock_skew_s: float = Field(default=30.0, ge=0, le=3600)
    log: LogSettings = LogSettings()
    # Reconnect backoff: doubles from min to max, with jitter, and starts again from min
    # after a connection the broker accepted. The low max lets a site reconnect within
    # ~4 s of a broker's return.
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=4.0, gt=0)
    # "module:function" hooks called with the daemon at start. A ``[training]`` table
    # loads the training extension (site_node.training.jobs) by itself; without one, the site never
    # imports torch or syft.
    extensions: list[str] = []
    training: TrainingSettings | None = None
    # The local telemetry history (site_node/history): every device's samples, bounded.
    history: HistorySettings = HistorySettings()
    # Live scoring of a deployed model (site_node/scoring): default rules, limits.
    scoring: ScoringSettings = ScoringSettings()

    @field_validator("site_id")
    @classmethod
    def _site_id(cls, value: str) -> str:
        validate_site_id(value)
        return value

    @model_validator(mode="after")
    def _history(self) -> SiteSettings:
        datasets = self.training.datasets if self.training is not None else []
        check_site_history(self.devices, self.history, datasets)
        return self

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox.db"

    @property
    def state_path(self) -> Path:
        return self.data_dir / "state.json"

    @property
    def commands_path(self) -> Path:
        return self.data_dir / "commands.db"

    @property
    def jobs_path(self) -> Path:
        return self.data_dir / "jobs.db"


def load_site_settings(
    file: Path | None, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> SiteSettings:
    """Layer defaults, TOML ``file``, ``FEDMQ_...`` env and ``flags`` (None = unset).

    Raises:
        schemas.SettingsError: unreadable file or invalid value (one line).
    """
    return load_settings(SiteSettings, file=file, flags=flags, env=env)
