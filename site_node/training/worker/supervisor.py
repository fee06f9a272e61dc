"""The daemon's side of the training worker process: start, feed, watch, stop it.

:class:`WorkerSupervisor` starts ``python -m site_node.training.worker`` (a new
interpreter through ``subprocess``: the daemon is multi-threaded and is never forked) on
the first operation, talks to it over a socket pair, and relays its reports to the job
controller. It never imports torch, syft or pandas.

- **Warm while work keeps coming**: ``worker_idle_s`` after its last operation ended the
  worker is asked to stop (it finishes what it does, e.g. preparing a slot), so its
  memory returns to the machine; the next operation starts a new one. The datasite's
  state is on disk, so approvals, slots and job history survive.
- **The worker dies, the site does not**: when the worker exits on its own (a signal, the
  kernel's OOM killer, a native crash), the job it was running fails with the reason;
  operations it had not started go to a new worker at once.
- **Memory limit**: its resident memory is read from ``/proc`` every 0.1 s; past
  ``memory_limit_mb`` it is killed and the running job fails with "memory limit N MB
  reached" (see :mod:`site_node.training.worker.limits` for why not an rlimit).
- **Cancel**: the worker stops a cancelled job at its next progress report; a job that
  does not stop within ``CANCEL_GRACE_S`` is stopped by killing the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from site_node.training.jobs.config import TrainingSettings
from site_node.training.worker import limits
from site_node.training.worker.main import Hello
from site_node.training.worker.protocol import (
    Cancel,
    Cancelled,
    Channel,
    DatasiteDown,
    DatasiteReady,
    Deny,
    Failed,
    Finished,
    OpDone,
    Prepare,
    Run,
    Started,
    Stop,
)

__all__ = ["CANCEL_GRACE_S", "WorkerDown", "WorkerState", "WorkerSupervisor"]

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 30.0
_WATCH_S = 0.1
_STOP_GRACE_S = 60.0
WorkerState = Literal["stopped", "starting", "idle", "busy"]


@dataclass(frozen=True)
class WorkerDown:
    """Report: the worker exited on its own (``reason``) before it opened the datasite."""

    reason: str


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    conn: Channel
    started_at: float
    ready: bool = False
    stopping: bool = False
    stop_deadline: float = 0.0
    kill_reason: str | None = None
    rss_mb: float = 0.0
    peak_rss_mb: float = 0.0


@dataclass
class _Pending:
    op: Prepare | Deny
    tries: int = 1


class WorkerSupervisor:
    """See the module docstring. ``submit``, ``cancel``, ``state``, ``stop``; thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        site_id: str,
        training: TrainingSettings,
        report: Callable[[object], None],
        log_file: Path | None = None,
        log_format: str = "text",
        verbose: bool = False,
    ) -> None:
        self._data_dir = data_dir
        self._site_id = site_id
        self._training = training
        self._report = report
        self._log = (log_file, log_format, verbose)
        self.memory_limit_mb = limits.memory_limit_mb(training)
        self.threads = limits.threads(training)
        self._lock = threading.RLock()
        self._w: _Worker | None = None
        self._n = 0  # operations sent to the current worker
        self._pending: dict[int, _Pending] = {}  # sent, not done yet
        self._started: set[str] = set()  # jobs the current worker started running
        self._cancelled: dict[str, float] = {}  # job -> when its cancel was sent
        self._last_work = time.monotonic()
        self._closed = False
        self.starts = 0
        self.last_exit: str | None = None
        self._watch = threading.Thread(target=self._watch_loop, name="worker-watch", daemon=True)
        self._watch.start()

    # -- controller side ---------------------------------------------------------------

    def start(self) -> None:
        """Start the worker now (e.g. at boot, to host the datasets), if it is not running."""
        with self._lock:
            self._ensure()

    def submit(self, op: Prepare | Deny) -> None:
        with self._lock:
            self._send(_Pending(op))

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled[job_id] = time.monotonic()
            w = self._w
            if w is not None:
                self._write(w, Cancel(job_id))

    def state(self) -> WorkerState:
        with self._lock:
            w = self._w
            if w is None:
                return "stopped"
            if not w.ready:
                return "starting"
            return "busy" if self._pending or self._started else "idle"

    def rss_mb(self) -> float | None:
        w = self._w
        return None if w is None else round(w.rss_mb, 1)

    def pid(self) -> int | None:
        w = self._w
        return None if w is None else w.proc.pid

    def stop(self, timeout: float = 5.0) -> None:
        """At daemon shutdown: ask the worker to stop, kill it if it does not in ``timeout``."""
        with self._lock:
            self._closed = True
            w = self._w
            if w is not None:
                w.stopping = True
                w.stop_deadline = time.monotonic() + timeout + 1.0
                self._write(w, Stop())
        if w is None:
            return
        try:
            w.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("training worker %d still busy at shutdown: killed", w.proc.pid)
            w.proc.kill()
            w.proc.wait(5)
        self._watch.join(2)

    # -- internals (under the lock) ------------------------------------------------------

    def _ensure(self) -> _Worker:
        if self._w is not None:
            return self._w
        parent, child = socket.socketpair()
        env = {**os.environ, **limits.thread_env(self.threads)}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "site_node.training.worker", str(child.fileno())],
                pass_fds=(child.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches the daemon, which stops it.
                start_new_session=True,
            )
        finally:
            child.close()
        conn = Channel(parent)
        w = self._w = _Worker(proc, conn, time.monotonic())
        self._n = 0
        self._started = set()
        self.starts += 1
        log_file, log_format, verbose = self._log
        hello = Hello(
            self._data_dir, self._site_id, self._training.model_dump_json(),
            self._training.nice, self.threads, log_file, log_format, verbose,
        )  # fmt: skip
        self._write(w, hello)
        threading.Thread(target=self._read_loop, args=(w,), name="worker-reports", daemon=True)\
            .start()  # fmt: skip
        log.info("training worker %d starting (memory limit %d MB, nice %d, %d thread(s))",
                 proc.pid, self.memory_limit_mb, self._training.nice, self.threads)  # fmt: skip
        return w

    def _send(self, pending: _Pending) -> None:
        w = self._ensure()
        self._n += 1
        self._pending[self._n] = pending
        self._last_work = time.monotonic()
        self._write(w, pending.op)

    @staticmethod
    def _write(w: _Worker, msg: object) -> None:
        try:
            w.conn.send(msg)
        except OSError as exc:
            # The worker is gone; its reader thread sees the pipe close and cleans up.
            log.debug("training worker pipe closed: %s", exc)

    # -- the worker's reports (one reader thread per worker) -------------------------------

    def _read_loop(self, w: _Worker) -> None:
        while True:
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                break
            except Exception:
                log.exception("unreadable report from the training worker")
                break
            self._on_report(w, msg)
        w.proc.wait()
        w.conn.close()
        self._on_exit(w)

    def _on_report(self, w: _Worker, msg: object) -> None:
        with self._lock:
            if isinstance(msg, OpDone):
                self._pending.pop(msg.n, None)
                self._last_work = time.monotonic()
                return
            if isinstance(msg, (DatasiteReady, DatasiteDown)):
                w.ready = True
                log.info("training worker %d ready in %.1f s", w.proc.pid,
                         time.monotonic() - w.started_at)  # fmt: skip
            elif isinstance(msg, Started):
                self._started.add(msg.job_id)
            elif isinstance(msg, (Finished, Failed, Cancelled)):
                self._started.discard(msg.job_id)
                self._cancelled.pop(msg.job_id, None)
            self._last_work = time.monotonic()
        self._report(msg)

    def _on_exit(self, w: _Worker) -> None:
        code = w.proc.returncode
        with self._lock:
            if self._w is not w:
                return
            self._w = None
            reason = w.kill_reason or _exit_reason(code)
            self.last_exit = reason
            pending, self._pending = self._pending, {}
            started, self._started = self._started, set()
            expected = w.stopping and not pending and w.kill_reason is None
            if expected:
                before = limits.rss_mb(os.getpid()) or 0.0
                limits.trim_memory()
                after = limits.rss_mb(os.getpid()) or 0.0
                log.info("training worker %d stopped (peak RSS %.0f MB); site daemon RSS "
                         "%.1f -> %.1f MB (malloc_trim)", w.proc.pid, w.peak_rss_mb, before,
                         after)  # fmt: skip
            else:
                log.warning("training worker %d: %s", w.proc.pid, reason)
            reports: list[object] = []
            if not w.ready and not expected:
                reports.append(WorkerDown(reason))
            again: list[_Pending] = []
            for p in pending.values():
                op = p.op
                cancelled = op.job_id in self._cancelled
                if isinstance(op, Run) and cancelled:
                    reports.append(Cancelled(op.job_id))
                elif isinstance(op, Run) and op.job_id in started:
                    reports.append(Failed(op.job_id, reason))
                elif w.stopping or p.tries < 2:
                    # Not started: a new worker takes it (an idle stop raced with it, or
                    # the worker died on something else).
                    again.append(_Pending(op, p.tries + (0 if w.stopping else 1)))
                elif isinstance(op, Prepare):
                    reports.append(Failed(op.job_id, reason))
            for job_id in started - {p.op.job_id for p in pending.values()}:
                reports.append(Failed(job_id, reason))
            if again and not self._closed:
                for p in again:
                    self._send(p)
            for msg in reports:
                if isinstance(msg, (Cancelled, Failed)):
                    self._cancelled.pop(msg.job_id, None)
        for msg in reports:
            self._report(msg)

    # -- memory, idle time, cancel grace (one watcher thread) ------------------------------

    def _watch_loop(self) -> None:
        while not self._closed:
            time.sleep(_WATCH_S if self._w is not None else 5 * _WATCH_S)
            with self._lock:
                w = self._w
                if w is None:
                    continue
                rss = limits.rss_mb(w.proc.pid)
                if rss is None:
                    continue
                w.rss_mb = rss
                w.peak_rss_mb = max(w.peak_rss_mb, rss)
                now = time.monotonic()
                for job_id, t in list(self._cancelled.items()):
                    if now - t > 3600 and job_id not in self._started:
                        del self._cancelled[job_id]  # cancelled before the worker saw it
                if rss > self.memory_limit_mb and w.kill_reason is None:
                    w.kill_reason = f"memory limit {self.memory_limit_mb} MB reached"
                    log.warning("training worker %d at %.0f MB: %s", w.proc.pid, rss,
                                w.kill_reason)  # fmt: skip
                    _kill(w)
                elif any(now - t > CANCEL_GRACE_S for j, t in self._cancelled.items()
                         if j in self._started) and w.kill_reason is None:  # fmt: skip
                    w.kill_reason = "cancelled job did not stop"
                    log.warning("training worker %d: a cancelled job did not stop: killed",
                                w.proc.pid)  # fmt: skip
                    _kill(w)
                elif w.stopping:
                    if now > w.stop_deadline and w.kill_reason is None:
                        log.warning("training worker %d did not stop: killed", w.proc.pid)
                        w.kill_reason = "stopped"
                        _kill(w)
                elif (
                    w.ready
                    and not self._pending
                    and not self._started
                    and now - self._last_work >= self._training.worker_idle_s
                ):
                    log.info("training worker %d idle for %.0f s: stopping it", w.proc.pid,
                             now - self._last_work)  # fmt: skip
                    w.stopping = True
                    w.stop_deadline = now + _STOP_GRACE_S
                    self._write(w, Stop())


def _kill(w: _Worker) -> None:
    with contextlib.suppress(OSError):
        w.proc.send_signal(signal.SIGKILL)


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (kill -9, or the kernel's out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"training worker killed by {name}{why}"
    return f"training worker exited with code {code}"
