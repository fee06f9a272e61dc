"""uvicorn on a thread of ``fedmq serve``, on a socket bound before it starts.

Binding first means a busy port fails ``fedmq serve`` at once with a one-line error, and
port 0 works (tests, the demo): the address actually bound is :attr:`ApiServer.url`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any

__all__ = ["ApiServer", "is_loopback", "parse_bind"]

log = logging.getLogger(__name__)


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8321`` for IPv6); ValueError with a one-line reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--http wants HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


class ApiServer:
    """Serves ``app`` until :meth:`stop`."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.listen(128)
        bound = self.sock.getsockname()
        name = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
        self.url = f"http://{name}:{bound[1]}"
        self.app = app
        # Open dashboard streams end when the app's state.stop() is called (see stop).
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=3,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="control-api", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except Exception:
            log.exception("control API stopped")

    def start(self) -> ApiServer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        stop = getattr(getattr(self.app, "state", None), "stop", None)
        if callable(stop):
            stop()  # the dashboard's poller and its open event streams
        self.server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()
