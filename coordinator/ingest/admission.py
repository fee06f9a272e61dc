"""What one site may cost the coordinator, checked from the topic before any decoding.

One site must not starve the others, whatever it sends on its own topics. Before the
writer decodes or stores an inbound message, :class:`Admission` looks only at its topic,
size and retain flag and answers one of:

* admit it;
* ``defer`` it: the site is over its byte budget (a token bucket per site). The message
  is neither stored nor acked, only PUBACKed, so the site's outbox keeps it and re-sends
  it later: nothing is lost, and the flood waits instead of the other sites;
* ``reject`` it as a dead letter: a retained message on a durable topic (durable data is
  delivered once, never replayed to every new subscriber; the coordinator clears it from
  the broker), a device beyond the per-site limit, or traffic from yet another site that
  never registered once too many such sites are known.

Each refusal is reported as an event at most once a minute per site and kind, with the
count of what was refused meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from schemas.topics import Channel, ParsedTopic

__all__ = ["Admission", "Limits", "Verdict"]

DURABLE_CHANNELS = frozenset(
    {
        Channel.TELEMETRY,
        Channel.PREDICTION,
        Channel.DEPLOYMENT,
        Channel.JOB_STATUS,
        Channel.JOB_RESULT,
    }
)
_REPORT_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Limits:
    """Per-site bounds (see ``CoordinatorSettings``)."""

    bytes_per_s: float = 8_000_000
    burst_bytes: float = 32_000_000
    max_devices: int = 256
    max_unregistered_sites: int = 1_000


@dataclass(frozen=True)
class Verdict:
    """Why a message is not admitted: ``action`` is "defer" or "reject"."""

    action: str
    reason: str
    detail: str


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at


class Admission:
    """Owned by the writer thread; ``devices`` and ``registered`` mirror the store."""

    def __init__(
        self,
        limits: Limits,
        devices: dict[str, set[str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits, self.devices, self.clock = limits, devices, clock
        self._buckets: dict[str, _Bucket] = {}
        self._reported: dict[tuple[str, str], float] = {}
        self.refused: dict[tuple[str, str], int] = {}
        self.new_devices: list[tuple[str, str]] = []

    def check(
        self,
        parsed: ParsedTopic,
        size: int,
        retain: bool,
        known_site: bool,
        unregistered_sites: int,
        now: float | None = None,
    ) -> Verdict | None:
        """None to admit the message, else what to do with it instead (``now``: the
        clock's time, read once per batch by the caller)."""
        site = parsed.site
        if site is None:
            return None
        if retain and parsed.channel in DURABLE_CHANNELS:
            return Verdict(
                "reject",
                "retained_durable",
                f"retained message on durable topic {parsed.channel.value}: durable data is "
                "never retained (cleared from the broker)",
            )
        if not known_site and unregistered_sites >= self.limits.max_unregistered_sites:
            return Verdict(
                "reject",
                "site_limit",
                f"{unregistered_sites} sites without a registration are already known; "
                f"traffic of yet another one is refused",
            )
        if parsed.channel is Channel.TELEMETRY and parsed.device is not None:
            seen = self.devices.setdefault(site, set())
            if parsed.device not in seen:
                if len(seen) >= self.limits.max_devices:
                    return Verdict(
                        "reject",
                        "device_limit",
                        f"site {site} already streams {len(seen)} devices "
                        f"(limit {self.limits.max_devices})",
                    )
                seen.add(parsed.device)
                self.new_devices.append((site, parsed.device))
        if not self._spend(site, size, self.clock() if now is None else now):
            return Verdict(
                "defer",
                "over_budget",
                f"site {site} is over its budget of {self.limits.bytes_per_s:.0f} bytes/s: "
                "messages are left unacked for the site to re-send later",
            )
        return None

    def report(self, site: str, reason: str) -> int | None:
        """Count one refusal; return how many to report now (None: not yet)."""
        key = (site, reason)
        self.refused[key] = self.refused.get(key, 0) + 1
        now = self.clock()
        last = self._reported.get(key)
        if last is not None and now - last < _REPORT_INTERVAL_S:
            return None
        self._reported[key] = now
        return self.refused.pop(key)

    def _spend(self, site: str, size: int, now: float) -> bool:
        limits = self.limits
        b = self._buckets.get(site)
        if b is None:
            b = self._buckets[site] = _Bucket(limits.burst_bytes, now)
        b.tokens = min(limits.burst_bytes, b.tokens + (now - b.at) * limits.bytes_per_s)
        b.at = now
        if b.tokens < size:
            return False
        b.tokens -= size
        return True
