"""The coordinator's logging: the shared implementation in :mod:`schemas.logs`."""

from __future__ import annotations

from schemas.logs import JsonFormatter, RateLimiter, setup_logging

__all__ = ["JsonFormatter", "RateLimiter", "setup_logging"]
