"""One leader among the ``fedmq serve`` instances that share a PostgreSQL database.

Issue 16 item 3: several ingest workers split the telemetry, but exactly one at a time
drives training rounds, liveness and rebirth. :class:`LeaderLock` is that election: a
session-level advisory lock held on a connection of its own. The lock lives exactly as
long as that connection:

* a holder that stops, crashes or is killed with SIGKILL closes its socket; the server
  ends the session and frees the lock at once, and the next :meth:`try_acquire`
  elsewhere wins (instances poll it, e.g. every second);
* a holder whose host or network died is detected by TCP keepalives, set on both ends
  (libpq's ``keepalives_*`` and the session's ``tcp_keepalives_*``) to give up after
  about ``keepalive_s`` seconds instead of the kernel's two hours;
* a holder must keep asking :meth:`held` (it pings its connection): a connection the
  server dropped means the lock is gone, and the instance must stop leading.

``fedmq serve --group`` polls it through :class:`coordinator.leadership.Leadership`.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import psycopg

__all__ = ["LeaderLock", "lock_key"]


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class LeaderLock:
    """``try_acquire`` / ``held`` / ``release`` of one named lock on one database."""

    def __init__(self, url: str, name: str = "fedmq-leader", keepalive_s: int = 6) -> None:
        self.url, self.name, self.key = url, name, lock_key(name)
        self.keepalive_s = max(3, keepalive_s)
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            idle, interval = self.keepalive_s // 3, 1
            count = max(1, (self.keepalive_s - idle) // interval)
            self._conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=self.keepalive_s,
                keepalives=1, keepalives_idle=idle, keepalives_interval=interval,
                keepalives_count=count, tcp_user_timeout=self.keepalive_s * 1000,
                application_name=f"fedmq {self.name}",
            )  # fmt: skip
            # The server's side of the same bargain (a dead client host frees the lock).
            for setting, value in (("tcp_keepalives_idle", idle),
                                   ("tcp_keepalives_interval", interval),
                                   ("tcp_keepalives_count", count)):  # fmt: skip
                self._conn.execute(f"SET {setting} = {int(value)}".encode())
        return self._conn

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True when this instance holds it now.
        Raises ``psycopg.OperationalError`` when the server cannot be reached."""
        if self.held():
            return True
        row = self._connect().execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        self._held = bool(row and row[0])
        return self._held

    def held(self) -> bool:
        """Whether this instance still holds the lock (its connection answers)."""
        if not self._held or self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._held = False
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        return self._held

    def release(self) -> None:
        """Give the lock up (stepping down); the connection stays for a later try."""
        if self._held and self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        self._held = False

    def close(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
