"""Rejected inbound payloads: a dead-letter row with the reason, and a rate-limited log."""

from __future__ import annotations

import logging

from coordinator.store import DeadLetterRow
from fedmq_runtime.logs import RateLimiter

__all__ = ["EXCERPT_BYTES", "DeadLetters"]

log = logging.getLogger(__name__)

EXCERPT_BYTES = 512


class DeadLetters:
    """Turns a rejected message into a :class:`DeadLetterRow`; logs at most once per
    reason every ``log_interval_s`` (a flood of garbage must not flood the log)."""

    def __init__(self, log_interval_s: float = 10.0) -> None:
        self._limiter = RateLimiter(log_interval_s)
        self.count = 0

    def reject(
        self, topic: str, payload: bytes, reason: str, detail: str, received_at: int
    ) -> DeadLetterRow:
        self.count += 1
        allowed, suppressed = self._limiter.allow(reason)
        if allowed:
            log.warning(
                "dead letter on %s: %s: %s (%d similar suppressed)",
                topic[:200],
                reason,
                detail[:200],
                suppressed,
            )
        excerpt = payload[:EXCERPT_BYTES].decode("utf-8", errors="backslashreplace")
        return DeadLetterRow(topic, excerpt, len(payload), reason, detail[:500], received_at)
