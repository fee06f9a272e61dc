"""Logging shared by both daemons: stderr plus an optional file, text or JSON lines.

Lives in ``schemas`` (stdlib only) because the site and the coordinator may not import
each other, and both must log the same way (DESIGN.md, "Operations").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["JsonFormatter", "RateLimiter", "setup_logging"]

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for containers and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(log_file: Path | None, fmt: str = "text", verbose: bool = False) -> None:
    """Configure the root logger once for a daemon process."""
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # paho logs every packet at DEBUG; keep it quiet unless asked twice.
    logging.getLogger("paho").setLevel(logging.WARNING)


class RateLimiter:
    """Allow at most one event per key every ``interval_s``; counts what it suppressed."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """Return (allowed, how many were suppressed since the last allowed one)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)
