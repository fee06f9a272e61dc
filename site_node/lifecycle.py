"""The messages that describe a site: status, registration and heartbeat payloads."""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from typing import Any, Literal

import psutil

from schemas import (
    DeviceInfo,
    Heartbeat,
    Registration,
    SiteStatus,
    TaskOffer,
    TelemetryDevice,
    encode,
)
from site_node.outbox import OutboxStats
from site_node.settings import SiteSettings

__all__ = ["device_info", "heartbeat", "registration", "software_version", "status"]

_BOOT = time.monotonic()


def software_version() -> str:
    try:
        return metadata.version("fedmq")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def device_info() -> DeviceInfo:
    """The host's compute; CUDA only if torch is already loaded (never import it here)."""
    cuda = False
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            cuda = bool(torch.cuda.is_available())
        except Exception:
            cuda = False
    return DeviceInfo(
        hostname=socket.gethostname(),
        cpu_count=os.cpu_count(),
        cuda=cuda,
        platform=platform.platform(terse=True),
    )


def status(
    settings: SiteSettings,
    session: int,
    state: Literal["online", "offline"],
    seq: int,
    reason: str = "",
    epoch: str = "",
) -> bytes:
    msg = SiteStatus(
        site=settings.site_id,
        epoch=epoch,
        session=session,
        seq=seq,
        state=state,
        reason=reason or None,
    )
    return encode(msg)


def registration(
    settings: SiteSettings,
    session: int,
    seq: int,
    telemetry: tuple[TelemetryDevice, ...],
    tasks: tuple[TaskOffer, ...] = (),
    epoch: str = "",
) -> bytes:
    msg = Registration(
        site=settings.site_id,
        epoch=epoch,
        session=session,
        seq=seq,
        name=settings.name,
        hierarchy=settings.hierarchy,
        location=settings.location,
        labels=settings.labels,
        software_version=software_version(),
        device=device_info(),
        telemetry=telemetry,
        tasks=tasks,
        heartbeat_interval_s=settings.heartbeat_interval_s,
    )
    return encode(msg)


def heartbeat(
    settings: SiteSettings,
    session: int,
    stats: OutboxStats,
    jobs_running: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """A heartbeat with host health (psutil) and the outbox's state (and stream epoch);
    ``extra`` adds optional fields (the training worker's state and memory)."""
    try:
        disk: float | None = psutil.disk_usage(str(settings.data_dir)).percent
    except OSError:
        disk = None
    msg = Heartbeat(
        site=settings.site_id,
        epoch=stats.epoch,
        session=session,
        seq=stats.last_seq,
        interval_s=settings.heartbeat_interval_s,
        uptime_s=round(time.monotonic() - _BOOT, 3),
        cpu_percent=psutil.cpu_percent(interval=None),
        mem_percent=psutil.virtual_memory().percent,
        disk_percent=disk,
        outbox_depth=stats.depth,
        outbox_bytes=stats.bytes,
        outbox_dropped=stats.dropped,
        last_acked=stats.last_acked,
        jobs_running=jobs_running,
        samples_dropped=stats.samples_dropped,
        outbox_error=stats.error,
        **(extra or {}),
    )
    return encode(msg)
