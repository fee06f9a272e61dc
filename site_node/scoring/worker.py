"""The scoring process: ``python -m site_node.scoring.worker FD`` (started by the scorer).

A new interpreter (never a fork of the threaded daemon) holding one end of a socket pair
as ``FD``. It reads a :class:`~site_node.scoring.protocol.Hello`, lowers its priority and
binds itself to its CPUs before any thread exists, then answers requests one at a time:
:class:`Load` (the task from the registry, checked against the deployed code hash, and the
weights, read once) and :class:`Score` (the task's ``predict`` on each window). Here torch
and numpy may load; the daemon never imports them. A ``predict`` that raises is one
window's error, never the process's end. When the daemon goes away (its end of the pipe
closes) the process exits.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import time
from typing import Any

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: python -m site_node.scoring.worker FD (started by fedmq-site)\n")
        return 2
    from site_node.scoring.protocol import Hello, Load, LoadFailed, Score, Stop
    from site_node.training.worker.protocol import Channel

    conn = Channel(socket.socket(fileno=int(args[0])))
    try:
        hello = conn.recv()
    except (EOFError, OSError):
        return 0
    if not isinstance(hello, Hello):
        return 2
    from site_node.training.worker.limits import apply_cpus, apply_nice

    apply_nice(hello.nice)
    cpus = apply_cpus(hello.threads, f"{os.getppid()}/scoring")  # ties: by its daemon
    from fedmq_runtime.logs import setup_logging

    setup_logging(hello.log_file, hello.log_format, hello.verbose)
    log.info("scoring process %d started (nice %d, %d thread(s) on CPUs %s)", os.getpid(),
             hello.nice, hello.threads, cpus)  # fmt: skip
    model: _Model | None = None
    while True:
        try:
            op = conn.recv()
        except (EOFError, OSError):
            log.info("scoring process: daemon gone, exiting")
            return 0
        if isinstance(op, Stop):
            return 0
        if isinstance(op, Load):
            try:
                model = _Model.load(op, hello)
            except Exception as exc:  # any failure of a task's import or weights
                log.warning("scoring process: cannot load %s: %s", op.task, exc)
                model = None
                conn.send(LoadFailed(_why(exc)))
            else:
                conn.send(model.loaded)
        elif isinstance(op, Score):
            conn.send(_score(model, op))


class _Model:
    def __init__(self, task: Any, weights: bytes, loaded: Any) -> None:
        self.task = task
        self.weights = weights
        self.loaded = loaded

    @classmethod
    def load(cls, op: Any, hello: Any) -> _Model:
        from site_node.scoring.protocol import Loaded
        from site_node.training.tasks.registry import get_task

        t0 = time.perf_counter()
        task = get_task(op.task, tasks_dir=hello.tasks_dir)
        if task.code_hash != op.code_hash:
            raise ValueError(
                f"task {op.task} code hash at this site is {task.code_hash}; the model was "
                f"deployed for {op.code_hash}"
            )
        weights = op.weights_path.read_bytes()
        impl = task.impl  # imports the task (torch) once, here
        outputs = {str(k): str(v) for k, v in dict(impl.OUTPUTS).items()}
        window = int(impl.WINDOW)
        if window < 1:
            raise ValueError(f"task {op.task}: WINDOW must be >= 1, not {window}")
        _threads(hello.threads)
        # A task that names its SENSORS is scored once on a window of zeros: weights that
        # do not fit its model fail here, at activation, not at every window.
        sensors = _sensor_names(impl)
        if sensors:
            task.predict(weights, [dict.fromkeys(sensors, 0.0) for _ in range(window)], {})
        return cls(task, weights, Loaded(window, outputs, round(time.perf_counter() - t0, 3)))


def _sensor_names(impl: Any) -> list[str]:
    names = getattr(impl, "SENSORS", None)
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else []


def _threads(n: int) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(RuntimeError):
            torch.set_num_threads(n)


def _score(model: _Model | None, op: Any) -> Any:
    from site_node.scoring.protocol import Scored, WindowResult

    cpu0 = time.process_time()
    results = []
    for device, window in op.items:
        t0 = time.perf_counter()
        outputs: dict[str, float] | None = None
        error: str | None = None
        if model is None:
            error = "no model loaded"
        else:
            try:
                raw = model.task.predict(model.weights, window, {})
                outputs = {str(k): float(v) for k, v in dict(raw).items()}
                bad = sorted(k for k, v in outputs.items() if not math.isfinite(v))
                if bad:
                    outputs, error = None, f"predict returned non-finite {bad}"
            except Exception as exc:
                error = _why(exc)
        ms = (time.perf_counter() - t0) * 1000
        results.append(WindowResult(device, outputs, error, round(ms, 3)))
    return Scored(tuple(results), time.process_time() - cpu0)


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


if __name__ == "__main__":
    sys.exit(main())
