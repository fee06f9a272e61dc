"""Logging for the site daemon: stderr plus an optional file, text or JSON lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

__all__ = ["JsonFormatter", "setup_logging"]

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
    """Configure the root logger once for the daemon process."""
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
    # paho logs every packet at DEBUG.
    logging.getLogger("paho").setLevel(logging.WARNING)
