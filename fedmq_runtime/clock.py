"""The one clock fedmq uses: UTC epoch milliseconds (stdlib only, cheap to import)."""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    """The current time as UTC epoch milliseconds."""
    return time.time_ns() // 1_000_000
