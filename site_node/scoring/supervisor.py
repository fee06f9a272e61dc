"""The daemon's handle on the scoring process: start it, ask it, watch it, replace it.

Used by one thread only (the scorer's scoring thread). The process is a new interpreter
(``python -m site_node.scoring.worker``, never a fork of the threaded daemon) with the
training worker's pipe and limits: its own session, ``nice`` and CPU binding applied
first thing, the OpenMP/BLAS pools held to ``threads``. Its resident memory is read from
``/proc`` before each request; past ``memory_limit_mb`` it is killed. A request that gets
no answer within its timeout, a closed pipe or an exit all raise :class:`ScorerDown`: the
caller restarts it (with backoff), the daemon carries on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from site_node.scoring.protocol import Hello, Load, Loaded, LoadFailed, Score, Scored, Stop
from site_node.training.worker.limits import rss_mb, thread_env
from site_node.training.worker.protocol import Channel

__all__ = ["LoadRefused", "ScorerDown", "ScoringProcess"]

log = logging.getLogger(__name__)
# signal.SIGKILL does not exist on Windows; a negative exit code of 9 means it on POSIX.
_SIGKILL = getattr(signal, "SIGKILL", 9)


class ScorerDown(RuntimeError):
    """The scoring process died, hung or went over its memory limit (the reason)."""


class LoadRefused(ValueError):
    """The scoring process could not load the model (the reason: bad task, hash, weights)."""


@dataclass(frozen=True)
class ProcessConfig:
    tasks_dir: Path | None
    nice: int
    threads: int
    memory_limit_mb: int
    log_file: Path | None = None
    log_format: str = "text"
    verbose: bool = False


class ScoringProcess:
    """One running scoring process (see the module docstring); not thread-safe."""

    def __init__(self, cfg: ProcessConfig) -> None:
        self.cfg = cfg
        parent, child = socket.socketpair()
        env = {**os.environ, **thread_env(cfg.threads)}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "site_node.scoring.worker", str(child.fileno())],
                pass_fds=(child.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches the daemon, which stops it.
                start_new_session=True,
            )
        finally:
            child.close()
        self._sock = parent
        self._conn = Channel(parent)
        self.started = time.monotonic()
        self.peak_rss_mb = 0.0
        self._send(
            Hello(cfg.tasks_dir, cfg.nice, cfg.threads, cfg.log_file, cfg.log_format, cfg.verbose)
        )
        log.info("scoring process %d starting (memory limit %d MB, nice %d, %d thread(s))",
                 self.proc.pid, cfg.memory_limit_mb, cfg.nice, cfg.threads)  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float | None:
        rss = rss_mb(self.proc.pid) if self.proc.poll() is None else None
        if rss is not None:
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
        return rss

    def load(self, op: Load, timeout: float) -> Loaded:
        reply = self._ask(op, timeout)
        if isinstance(reply, LoadFailed):
            raise LoadRefused(reply.reason)
        if not isinstance(reply, Loaded):
            raise ScorerDown(f"unexpected reply to load: {type(reply).__name__}")
        return reply

    def score(self, op: Score, timeout: float) -> Scored:
        reply = self._ask(op, timeout)
        if not isinstance(reply, Scored):
            raise ScorerDown(f"unexpected reply to score: {type(reply).__name__}")
        return reply

    def stop(self, timeout: float = 3.0) -> None:
        """Ask it to exit; kill it if it does not within ``timeout``."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self._conn.send(Stop())
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._conn.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()  # SIGKILL on POSIX, TerminateProcess on Windows
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    # -- internals ---------------------------------------------------------------------

    def _send(self, msg: object) -> None:
        try:
            self._conn.send(msg)
        except OSError as exc:
            raise ScorerDown(self.exit_reason(f"pipe closed ({exc})")) from None

    def _ask(self, op: object, timeout: float) -> object:
        rss = self.rss_mb()
        if rss is not None and rss > self.cfg.memory_limit_mb:
            self.kill()
            raise ScorerDown(f"memory limit {self.cfg.memory_limit_mb} MB reached ({rss:.0f} MB)")
        self._send(op)
        self._sock.settimeout(timeout)
        try:
            return self._conn.recv()
        except TimeoutError:
            self.kill()
            raise ScorerDown(f"no answer within {timeout:g} s: killed") from None
        except (EOFError, OSError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)
            raise ScorerDown(self.exit_reason("pipe closed")) from None
        finally:
            with contextlib.suppress(OSError):
                self._sock.settimeout(None)

    def exit_reason(self, fallback: str = "still running") -> str:
        """Why the process ended (a signal, an exit code), else ``fallback``."""
        code = self.proc.poll()
        if code is None:
            return fallback
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = " (kill -9, or the out-of-memory killer)" if -code == _SIGKILL else ""
            return f"scoring process killed by {name}{why}"
        return f"scoring process exited with code {code}"
