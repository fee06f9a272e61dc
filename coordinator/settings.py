"""Typed settings of the coordinator daemon (``fedmq serve``).

Built once at the CLI edge with :func:`schemas.load_settings` (TOML < ``FEDMQ_...`` env <
flags) and passed down explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from coordinator.store.urls import is_postgres_url
from fedmq_runtime.settings import MqttSettings

__all__ = ["GROUP_SESSION_EXPIRY_S", "CoordinatorSettings"]

# An ingest group's instances: how long the broker keeps a stopped one's session (and
# queues its share of the telemetry) for it to come back.
GROUP_SESSION_EXPIRY_S = 120


class CoordinatorSettings(BaseModel):
    """Everything ``fedmq serve`` needs; nested ``mqtt`` as in the site settings."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("db", mode="before")
    @classmethod
    def _db_path_or_url(cls, value: object) -> object:
        if isinstance(value, str) and is_postgres_url(value):
            return value
        return Path(value) if isinstance(value, str) else value

    mqtt: MqttSettings = MqttSettings()
    # A SQLite file, or a PostgreSQL database as a URL (postgresql://user@host:port/name;
    # the postgres extra): a URL stays a str, anything else is a Path.
    db: Path | str = Path("fedmq.db")
    client_id: str = Field(default="fedmq-coordinator", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # Several ``fedmq serve`` instances on one PostgreSQL database: each subscribes to the
    # telemetry through the MQTT shared subscription $share/{ingest_group}/... (every message
    # to one of them), and the one holding the leader lock also takes statuses,
    # registrations, heartbeats, job messages and the rest, tracks liveness and drives
    # training runs. Empty: a single instance doing everything.
    ingest_group: str = Field(default="", pattern=r"^([A-Za-z0-9_-]{1,64})?$")
    # MQTT 5 session expiry: the broker keeps our subscription and queued QoS 1 messages
    # this long while the coordinator is down (3.1.1 brokers keep it until cleaned).
    session_expiry_s: int = Field(default=24 * 3600, ge=0)
    # MQTT 5 Receive Maximum: unacked deliveries in flight, i.e. our backpressure window.
    receive_maximum: int = Field(default=20_000, ge=1, le=65_535)
    patience: float = Field(default=3.0, gt=0)
    batch_size: int = Field(default=2_000, ge=1)
    batch_time_s: float = Field(default=0.05, gt=0)
    # Decode and insert telemetry in a child process (coordinator.ingest.writer_process), off
    # the GIL that paho's network thread needs. Measured side by side
    # (tests/bench/bench_coordinator.py, load ~4): in-process 0.66x a bare paho subscriber,
    # writer process 1.02x. Under heavy load from other work (load 8-15) it measured slower:
    # set false on a busy host.
    writer_process: bool = True
    # Which MQTT client receives (coordinator.bus: paho; coordinator.bus_asyncio: an asyncio
    # loop over a packet codec of its own). One or the other, never both. Measured side by
    # side (tests/bench/bench_coordinator.py --receive-paths, 10 samples/msg, three runs):
    # asyncio 2.0-2.5x less CPU per stored sample (serve's own process ~5x less), but
    # 1.9-6.1x the samples/s and 1.2-1.3x on a quiet machine, where the writer child bounds
    # both; at 100 samples/msg equal. Not the >= 2x everywhere asked to change the default.
    receive: Literal["paho", "asyncio"] = "paho"
    liveness_interval_s: float = Field(default=0.5, gt=0)
    rebirth_interval_s: float = Field(default=10.0, ge=0)
    # At most this many cmd/rebirth per second in all (thousands of unknown site ids must
    # not turn into thousands of commands).
    rebirth_per_s: float = Field(default=20.0, gt=0)
    # What one site may cost (see coordinator/ingest/admission.py): over its byte budget its
    # messages are left unacked for it to re-send later; devices and unregistered sites
    # beyond these bounds are dead letters.
    site_bytes_per_s: float = Field(default=8_000_000, gt=0)
    site_burst_bytes: float = Field(default=32_000_000, gt=0)
    site_max_devices: int = Field(default=256, ge=1)
    max_unregistered_sites: int = Field(default=1_000, ge=1)
    heartbeat_retention_days: float = Field(default=7.0, gt=0)
    telemetry_retention_days: float = Field(default=90.0, gt=0)
    purge_interval_s: float = Field(default=3600.0, gt=0)
    signing_key_file: Path | None = None
    log_file: Path | None = None
    log_format: Literal["text", "json"] = "text"
    verbose: bool = False

    @model_validator(mode="after")
    def _group_needs_postgres(self) -> CoordinatorSettings:
        if self.ingest_group:
            if "session_expiry_s" not in self.model_fields_set:
                # The broker keeps routing a share of the telemetry to a dead instance's
                # session until it expires; the sites re-send what that held once it does.
                self.session_expiry_s = GROUP_SESSION_EXPIRY_S
            if self.mqtt.protocol == "3.1.1":
                raise ValueError(
                    "ingest_group (--group) needs MQTT 5 shared subscriptions "
                    "($share/GROUP/...): use protocol 5 or auto, not 3.1.1"
                )
            if not is_postgres_url(self.db):
                raise ValueError(
                    "ingest_group (--group) needs a PostgreSQL database (--db postgresql://...): "
                    "the instances of a group share it; one SQLite file has one writer process"
                )
            if self.client_id == "fedmq-coordinator":
                raise ValueError(
                    "ingest_group (--group) needs a client_id (--client-id) of each instance's "
                    "own, the same at every restart: the broker keeps that instance's session"
                )
        return self
