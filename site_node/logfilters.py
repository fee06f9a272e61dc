"""Keep third-party noise out of the site's logs (installed after ``setup_logging``).

- syft logs ``CRITICAL Hash of the signing key '…'`` every time a datasite starts: it is
  not critical, so it is demoted to DEBUG (shown with ``--verbose`` only).
- syft's uploads draw tqdm progress bars (carriage returns, ANSI cursor moves) on
  stderr, which in a service is the log file or the journal: with stderr not a terminal
  they are turned off (``TQDM_DISABLE``, inherited by the training worker process).
- ANSI escape sequences in log records (colours some libraries put in messages) are
  removed on every handler that does not write to a terminal.

Call :func:`install_site_log_filters` in every site process that may run syft (the
daemon, the training worker) right after its logging setup; it is idempotent.
"""

from __future__ import annotations

import logging
import os
import re
import sys

__all__ = ["DemoteSyftKeyHash", "StripAnsi", "install_site_log_filters"]

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
SYFT_SERVER_LOGGER = "syft.server.server"


class DemoteSyftKeyHash(logging.Filter):
    """syft's per-start ``Hash of the signing key`` line: DEBUG, not CRITICAL."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and str(record.msg).startswith("Hash of the signing key"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


class StripAnsi(logging.Filter):
    """Remove ANSI escape sequences from a record's message (for files and journals)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\x1b" in message:
            record.msg, record.args = ANSI.sub("", message), None
        return True


def _is_tty(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


def install_site_log_filters() -> None:
    """Install the filters above on the current logging setup (idempotent)."""
    syft_logger = logging.getLogger(SYFT_SERVER_LOGGER)
    if not any(isinstance(f, DemoteSyftKeyHash) for f in syft_logger.filters):
        syft_logger.addFilter(DemoteSyftKeyHash())
    for handler in logging.getLogger().handlers:
        if not _is_tty(handler) and not any(isinstance(f, StripAnsi) for f in handler.filters):
            handler.addFilter(StripAnsi())
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
