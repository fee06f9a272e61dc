"""The training worker process: ``python -m site_node.training.worker FD``.

Started by the daemon's :class:`~site_node.training.worker.WorkerSupervisor` with one end
of a socket pair as ``FD``. The first message is its :class:`Hello` (settings); then
operations arrive and reports go back (:mod:`site_node.training.worker.protocol`). A
reader thread takes operations off the pipe (a cancel reaches a running job at once);
the main thread runs them (:class:`site_node.training.jobs.runner.Runner`). When the
daemon goes away (its end of the pipe closes) the worker exits at once.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Hello", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hello:
    """What the worker needs to know, sent first by the supervisor."""

    data_dir: Path
    site_id: str
    training_json: str
    nice: int
    threads: int
    log_file: Path | None
    log_format: str
    verbose: bool


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: python -m site_node.training.worker FD (started by fedmq-site)\n")
        return 2
    from site_node.training.worker.protocol import Channel

    conn = Channel(socket.socket(fileno=int(args[0])))
    hello = conn.recv()
    if not isinstance(hello, Hello):
        return 2
    # First, before any thread exists: every thread the worker starts inherits its nice.
    from site_node.training.worker.limits import apply_cpus, apply_nice

    apply_nice(hello.nice)
    cpus = apply_cpus(hello.threads, hello.site_id)
    from fedmq_runtime.logs import setup_logging

    setup_logging(hello.log_file, hello.log_format, hello.verbose)
    from site_node.logfilters import install_site_log_filters

    install_site_log_filters()  # the worker runs syft: demote its start-up noise
    from site_node.training.jobs.config import TrainingSettings
    from site_node.training.jobs.runner import Runner
    from site_node.training.worker.protocol import Cancel, Deny, Prepare, Stop

    training = TrainingSettings.model_validate_json(hello.training_json)
    runner = Runner(hello.data_dir, hello.site_id, training, conn.send, threads=hello.threads)

    def read() -> None:
        n = 0
        while True:
            try:
                op = conn.recv()
            except (EOFError, OSError):
                # The daemon is gone (or closed the pipe): nobody will take our reports.
                log.info("training worker: daemon gone, exiting")
                os._exit(0)
            if isinstance(op, Cancel):
                runner.cancel(op.job_id)
            elif isinstance(op, Stop):
                runner.stop()
            elif isinstance(op, (Prepare, Deny)):
                n += 1
                runner.submit(n, op)

    threading.Thread(target=read, name="worker-pipe", daemon=True).start()
    log.info("training worker %d started (nice %d, %d thread(s) on CPUs %s)", os.getpid(),
             hello.nice, hello.threads, cpus)  # fmt: skip
    runner.run()
    log.info("training worker %d stopped", os.getpid())
    return 0
