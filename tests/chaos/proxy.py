"""A loopback TCP proxy that can stall: it stops forwarding in both directions, then resumes.

Stalled, it keeps every connection open (new ones are accepted too) but moves no byte, as
a dead link or a hung NAT would: the site learns of it only through its MQTT keepalive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from tests.helpers.broker import free_port

__all__ = ["StallProxy"]

log = logging.getLogger(__name__)

_CHUNK = 65536


class StallProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:upstream_port`` on an own event loop thread."""

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.connections = 0

    def start(self) -> StallProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stall(self) -> None:
        """Stop forwarding (connections stay open); returns once the loop applied it."""
        self._apply(self._flowing.clear)

    def resume(self) -> None:
        """Forward again; returns once the loop applied it."""
        self._apply(self._flowing.set)

    def _apply(self, change: Callable[[], None]) -> None:
        async def run() -> None:
            change()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _serve(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            down_w.close()
            return
        pipes = [
            asyncio.ensure_future(self._pipe(down_r, up_w)),
            asyncio.ensure_future(self._pipe(up_r, down_w)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            for writer in (up_w, down_w):
                with contextlib.suppress(Exception):
                    writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                # Waiting before the read too: stalled, the kernel buffers fill and the
                # sender blocks, as on a dead link.
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    return
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            return
