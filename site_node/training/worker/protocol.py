"""What the job controller and the training worker process say to each other.

Operations go from the daemon to the worker, reports come back; both are small frozen
dataclasses pickled over the pipe between these two local processes (nothing received
from the network is ever unpickled: the controller builds every operation itself).
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Cancel",
    "Cancelled",
    "Channel",
    "DatasiteDown",
    "DatasiteReady",
    "Deny",
    "Failed",
    "Finished",
    "Op",
    "OpDone",
    "Prepare",
    "Progress",
    "Report",
    "Run",
    "Started",
    "Stop",
]


# -- operations (controller -> worker) --------------------------------------------------


@dataclass(frozen=True)
class Prepare:
    """Submit the job's code request so it waits in the datasite for the operator."""

    job_id: str
    task: str
    weights: bytes | None
    hyperparams: dict[str, Any]


@dataclass(frozen=True)
class Run(Prepare):
    """Submit if needed, approve as the site admin, run (stopped by a :class:`Cancel`)."""


@dataclass(frozen=True)
class Deny:
    job_id: str
    reason: str


@dataclass(frozen=True)
class Cancel:
    """Stop the job at its next progress report, or skip it if it is still queued."""

    job_id: str


@dataclass(frozen=True)
class Stop:
    """Finish the current operation, close the datasite and exit."""


Op = Prepare | Deny | Cancel | Stop


# -- reports (worker -> controller) ------------------------------------------------------


@dataclass(frozen=True)
class DatasiteReady:
    datasets: tuple[tuple[str, str, int], ...]  # (name, task, rows) of hosted datasets


@dataclass(frozen=True)
class DatasiteDown:
    reason: str


@dataclass(frozen=True)
class Started:
    job_id: str


@dataclass(frozen=True)
class Progress:
    job_id: str
    fraction: float


@dataclass(frozen=True)
class Finished:
    job_id: str
    weights: bytes
    n_samples: int
    metrics: dict[str, float]
    train_time_s: float


@dataclass(frozen=True)
class Failed:
    job_id: str
    reason: str


@dataclass(frozen=True)
class Cancelled:
    job_id: str


@dataclass(frozen=True)
class OpDone:
    """The worker is through with the ``n``-th operation it received (counted from 1)."""

    n: int


Report = DatasiteReady | DatasiteDown | Started | Progress | Finished | Failed | Cancelled

_LEN = struct.Struct("!Q")


class Channel:
    """One end of the worker's socket pair: length-prefixed pickles, whole or not at all.

    ``send`` may be called from several threads (it holds a lock); ``recv`` from one.
    Raises ``EOFError`` once the other end closed, ``OSError`` on a broken socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, msg: object) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._sock.sendall(_LEN.pack(len(data)) + data)

    def recv(self) -> object:
        (size,) = _LEN.unpack(self._read(_LEN.size))
        return pickle.loads(self._read(size))

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("the other end closed the channel")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        self._sock.close()
