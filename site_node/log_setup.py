"""The site daemon's logging: the shared implementation in :mod:`schemas.logs`."""

from __future__ import annotations

from schemas.logs import JsonFormatter, setup_logging

__all__ = ["JsonFormatter", "setup_logging"]
