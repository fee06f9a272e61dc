"""The demo's terminal output: plain lines, and a status line that updates in place.

On a terminal the status line is rewritten in place; in a log or a pipe it is printed only
when its text changes (and at most every ``quiet_s`` seconds for text that only counts
time), so captured output stays short and readable.
"""

from __future__ import annotations

import sys
import time

import click

__all__ = ["Console"]


class Console:
    """Writes to stdout; ``status`` lines collapse into one on a terminal."""

    def __init__(self, tty: bool | None = None, quiet_s: float = 10.0) -> None:
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.quiet_s = quiet_s
        self._open = False
        self._last_key = ""
        self._last_at = 0.0

    def line(self, text: str = "") -> None:
        """A permanent line (ends any status line first)."""
        self._close()
        click.echo(text)

    def status(self, text: str, key: str | None = None) -> None:
        """A transient line; ``key`` is what must change for a pipe to get a new line."""
        if self.tty:
            click.echo("\r\x1b[2K" + text, nl=False)
            self._open = True
            return
        key = text if key is None else key
        now = time.monotonic()
        if key != self._last_key or now - self._last_at >= self.quiet_s:
            click.echo(text)
            self._last_key, self._last_at = key, now

    def _close(self) -> None:
        if self._open:
            click.echo("")
            self._open = False
