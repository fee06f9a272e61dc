"""Logging shared by both daemons: stderr plus an optional file, text or JSON lines.

Shared by both daemons, which may not import each other and must log the same way; also
the one rate limiter for recurring log lines and events.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["JsonFormatter", "RateLimitedLog", "RateLimiter", "setup_logging"]

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
    """Allow at most one event per key every ``interval_s``; counts what it suppressed.

    Thread-safe (a source's reader thread and the daemon may report the same key)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, int]:
        """Return (allowed, how many were suppressed since the last allowed one)."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False, 0
            self._last[key] = now
            return True, self._suppressed.pop(key, 0)


class RateLimitedLog:
    """Logs a recurring problem at most once per ``interval_s`` per key, counting the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._limiter = RateLimiter(interval_s, clock)

    def __call__(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` was logged recently; True if it was logged."""
        allowed, suppressed = self._limiter.allow(key)
        if not allowed:
            return False
        if suppressed:
            self._logger.log(level, msg + " (%d similar suppressed)", *args, suppressed)
        else:
            self._logger.log(level, msg, *args)
        return True
