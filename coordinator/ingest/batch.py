"""What one writer batch collects before its commit (rows, acks, touched sites)."""

from __future__ import annotations

from typing import Any

from coordinator.store import AlarmRow, DurableRow, EventRow, HeartbeatRow, SiteRecord

__all__ = ["Batch", "durable_row"]


class Batch:
    __slots__ = (
        "ack_streams",
        "alarms",
        "clear_retained",
        "committed",
        "dead",
        "deployments",
        "durable",
        "events",
        "gaps",
        "heartbeats",
        "mids",
        "needs_registration",
        "new_sites",
        "touched",
    )

    def __init__(self) -> None:
        self.mids: list[tuple[int, int]] = []
        self.durable: list[DurableRow] = []
        self.committed: list[tuple[str, str, int]] = []  # (site, epoch, seq)
        self.heartbeats: list[HeartbeatRow] = []
        self.events: list[EventRow] = []
        self.dead: list[Any] = []
        # (site, epoch, seq of the announcing message, ranges, received_at)
        self.gaps: list[tuple[str, str, int, tuple[tuple[int, int], ...], int]] = []
        self.touched: dict[str, SiteRecord] = {}
        self.ack_streams: set[tuple[str, str]] = set()
        self.clear_retained: set[str] = set()
        self.needs_registration: set[str] = set()
        self.new_sites: set[str] = set()  # sites first seen in this batch, admitted
        self.alarms: dict[tuple[str, str, str], AlarmRow] = {}  # (site, device, alarm id)
        # Deployment statuses decoded in this batch, applied if their message is new.
        self.deployments: list[tuple[Any, int]] = []  # (DeploymentStatus, received_at)


def durable_row(
    msg: Any, at: int, device: str | None, job: str | None, samples: Any, payload: str | None
) -> DurableRow:
    return DurableRow(
        msg.site,
        msg.seq,
        msg.kind,
        msg.session,
        msg.ts,
        at,
        msg.historical,
        device,
        job,
        samples,
        payload,
        msg.epoch,
    )
