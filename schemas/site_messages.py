"""What a site says about itself: status, registration and heartbeat."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import INT63_MAX, Envelope, Level
from schemas.version import SCHEMA_VERSION

__all__ = [
    "DatasetSummary",
    "DeviceInfo",
    "Heartbeat",
    "Location",
    "PlantHierarchy",
    "Registration",
    "SensorSpec",
    "SiteStatus",
    "TaskOffer",
    "TelemetryDevice",
]

_frozen = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class SiteStatus(Envelope):
    """Retained online/offline state; the offline form is also the site's Last Will."""

    kind: Literal["site_status"] = "site_status"
    state: Literal["online", "offline"]
    reason: str | None = Field(default=None, max_length=200)


class PlantHierarchy(BaseModel):
    """ISA-95 style place of the site; kept in the payload, never in the topic."""

    model_config = _frozen
    enterprise: str | None = None
    site: str | None = None
    area: str | None = None
    line: str | None = None


class Location(BaseModel):
    model_config = _frozen
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class DeviceInfo(BaseModel):
    """The compute a site offers for training."""

    model_config = _frozen
    hostname: str | None = None
    cpu_count: int | None = Field(default=None, ge=1, le=INT63_MAX)
    cuda: bool = False
    platform: str | None = None


class SensorSpec(BaseModel):
    model_config = _frozen
    name: str = Field(min_length=1, max_length=128)
    unit: str = Field(default="", max_length=32)


class TelemetryDevice(BaseModel):
    model_config = _frozen
    device: Level
    source: Literal["serial", "system", "file"]
    sensors: tuple[SensorSpec, ...] = ()
    # What the site publishes of the device: every sample (raw), window aggregates as
    # sensors <name>.min/.mean/.max/.count stamped at each window's end (summary), or
    # nothing (none: kept in the site's local history only; sensors then stay empty).
    publish: Literal["raw", "summary", "none"] = "raw"
    summary_window_s: float | None = Field(default=None, gt=0)


class TaskOffer(BaseModel):
    """A training task the site allows, identified by the sha256 of its code."""

    model_config = _frozen
    name: Level
    version: str = "1"
    code_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


class DatasetSummary(BaseModel):
    """What a site hosts, without any of the data."""

    model_config = _frozen
    name: Level
    rows: int = Field(ge=0, le=INT63_MAX)
    description: str = ""


class Registration(Envelope):
    """Retained description of a site (cleared by an empty retained payload)."""

    kind: Literal["registration"] = "registration"
    name: str = Field(default="", max_length=200)
    hierarchy: PlantHierarchy = PlantHierarchy()
    location: Location | None = None
    labels: dict[str, str] = {}
    software_version: str = ""
    schema_version: str = SCHEMA_VERSION
    device: DeviceInfo = DeviceInfo()
    telemetry: tuple[TelemetryDevice, ...] = ()
    tasks: tuple[TaskOffer, ...] = ()
    datasets: tuple[DatasetSummary, ...] = ()
    approval_mode: Literal["auto", "manual"] = "auto"
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    # The model version the site scores live telemetry with (its active deployment);
    # None when none is active.
    model_version: str | None = Field(default=None, max_length=128)
    # Tasks the site takes deployments of (its allow-list, each with the code hash it
    # runs), dataset or not: ``tasks`` lists only those it can train (a hosted dataset).
    deploy_tasks: tuple[TaskOffer, ...] = ()


class Heartbeat(Envelope):
    """Periodic liveness and health; QoS 0, not durable."""

    kind: Literal["heartbeat"] = "heartbeat"
    interval_s: float = Field(gt=0)
    uptime_s: float = Field(default=0.0, ge=0)
    cpu_percent: float | None = Field(default=None, ge=0)
    mem_percent: float | None = Field(default=None, ge=0, le=100)
    disk_percent: float | None = Field(default=None, ge=0, le=100)
    outbox_depth: int = Field(default=0, ge=0, le=INT63_MAX)
    outbox_bytes: int = Field(default=0, ge=0, le=INT63_MAX)
    outbox_dropped: int = Field(default=0, ge=0, le=INT63_MAX)
    last_acked: int = Field(default=0, ge=0, le=INT63_MAX)
    jobs_running: int = Field(default=0, ge=0, le=INT63_MAX)
    # Samples lost before they reached the outbox (e.g. a full disk), counted since start.
    samples_dropped: int = Field(default=0, ge=0, le=INT63_MAX)
    # Why the outbox cannot store right now (e.g. "disk full"); None when healthy.
    outbox_error: str | None = Field(default=None, max_length=200)
    # A training site's worker process: "stopped" (its memory returned to the machine),
    # "starting", "idle" (warm) or "busy"; its resident memory while it runs. None on a
    # site without training.
    worker_state: Literal["stopped", "starting", "idle", "busy"] | None = None
    worker_rss_mb: float | None = Field(default=None, ge=0, le=10_000_000)
    # The model version of the site's active deployment (scoring); None when none is.
    model_version: str | None = Field(default=None, max_length=128)
    # A site's live scoring (site_node/scoring): "off", "loading", "scoring" or
    # "restarting" (its scoring process died and is coming back); the scoring process's
    # resident memory; windows scored and scoring errors since the daemon started. None on
    # a site without the scorer.
    scoring_state: Literal["off", "loading", "scoring", "restarting"] | None = None
    scorer_rss_mb: float | None = Field(default=None, ge=0, le=10_000_000)
    windows_scored: int | None = Field(default=None, ge=0, le=INT63_MAX)
    scoring_errors: int | None = Field(default=None, ge=0, le=INT63_MAX)
