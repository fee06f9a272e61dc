"""The chaos proxy forwards both ways, and stalled it moves no byte until resumed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.chaos.proxy import StallProxy


@pytest.fixture
def echo() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    server.close()


def test_stalled_proxy_holds_bytes_until_resumed(echo: int) -> None:
    proxy = StallProxy(echo).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"ping")
            assert s.recv(16) == b"ping"
            proxy.stall()  # applied when it returns
            s.sendall(b"held")
            s.settimeout(1.0)
            with pytest.raises(TimeoutError):
                s.recv(16)
            proxy.resume()
            s.settimeout(10)
            assert s.recv(16) == b"held"
    finally:
        proxy.close()
