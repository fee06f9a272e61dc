"""``run_demo``: the demo wrapped in its cleanup.

Every child is stopped in a ``finally`` (sites, then the coordinator, then the broker),
also on Ctrl-C and SIGTERM; the database stays for ``fedmq sites``/``runs``/``telemetry``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coordinator.demo.broker import BrokerMissing
from coordinator.demo.console import Console
from coordinator.demo.options import DemoError, DemoLayout, DemoOptions
from coordinator.demo.procs import Supervisor
from coordinator.demo.readiness import StartupFailed
from coordinator.demo.session import DemoSession, inspect_commands
from coordinator.demo.startup import child_env
from coordinator.training.events import TrainError

__all__ = ["run_demo"]


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt) while the demo runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut the shutdown short (it is bounded by timeouts)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _log_to(path: Path) -> None:
    # The in-process training run logs (reconnects, round details) go to a file, as every
    # child's do: the terminal shows only the demo's own progress display.
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("paho").setLevel(logging.WARNING)


def run_demo(opts: DemoOptions, console: Console | None = None) -> int:
    """Run the whole demo; returns an exit code (0, 5 a failed run, 130 interrupted).

    Raises:
        DemoError: a user-facing failure (no mosquitto, a site that never came up).
    """
    missing = [m for m in ("torch", "syft", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoError(
            f"fedmq demo trains models and needs {', '.join(missing)}: "
            "pip install 'fedmq[train]' (or run `bash .ci/setup` in a clone)"
        )
    console = console or Console()
    layout = DemoLayout(opts.out.resolve())
    layout.prepare()
    _log_to(layout.logs / "demo.log")
    supervisor = Supervisor(layout.pids, env=child_env())
    session = DemoSession(opts, layout, supervisor, console)
    code = 0
    try:
        with _sigterm_interrupts():
            code = session.run()
    except KeyboardInterrupt:
        console.line("interrupted: stopping the demo")
        with _signals_ignored():
            session.interrupt()
        code = 130
    except (BrokerMissing, StartupFailed, FileNotFoundError) as exc:
        raise DemoError(str(exc)) from None
    except TrainError as exc:
        raise DemoError(f"training: {exc}", exc.code) from None
    finally:
        with _signals_ignored():
            console.line("stopping sites, coordinator and broker ...")
            supervisor.stop_all()
            left = [c.name for c in supervisor.children if c.alive()]
            if left:
                console.line(f"warning: still running: {', '.join(left)}")
            console.line(f"the database stays in place: {layout.db}; inspect it with:")
            for cmd in inspect_commands(layout.db):
                console.line(f"  {cmd}")
    return code
