"""Child processes of the demo: each in its own process group, logged to a file, reaped.

Every child starts in a new session (so a terminal's Ctrl-C reaches only the demo, which
then stops the children in order) and, on Linux, with a parent-death signal (so even a
``kill -9`` of the demo does not leave a broker or a site behind). The pids go to a JSON
file in the demo dir for whoever needs to check that nothing survived.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Child", "Supervisor"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    # Best effort: only Linux has prctl; elsewhere the try/finally in the demo is all.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Child:
    """One started child: its role name, process and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Supervisor:
    """Starts children, records their pids, and stops them all (TERM, wait, KILL)."""

    def __init__(self, pids_file: Path, env: dict[str, str] | None = None) -> None:
        self.pids_file = pids_file
        self.children: list[Child] = []
        self.env = env if env is not None else dict(os.environ)
        self._write_pids()

    def spawn(self, name: str, argv: Sequence[str], log_file: Path, cwd: Path) -> Child:
        """Start ``argv`` with stdout and stderr appended to ``log_file``."""
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        child = Child(name, proc, log_file)
        self.children.append(child)
        self._write_pids()
        log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return child

    def dead(self) -> list[Child]:
        """Children that exited on their own."""
        return [c for c in self.children if not c.alive()]

    def stop(self, children: Sequence[Child], timeout: float) -> None:
        """SIGTERM each child's process group, wait up to ``timeout`` s, then SIGKILL."""
        for child in children:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", child.name, child.pid)
        for child in children:
            # The group too: a child's own children (none expected) must not outlive it.
            _signal_group(child, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(5)

    def stop_all(self, timeout: float = 20.0) -> None:
        """Stop every child, the most recently started first (sites, then serve, broker)."""
        roles: dict[str, list[Child]] = {}
        for child in self.children:
            roles.setdefault(child.name.split("-", 1)[0], []).append(child)
        # Sites go down together (each publishes its offline status while serve listens),
        # then the coordinator, then the broker they all talk through.
        for group in reversed(list(roles.values())):
            self.stop(group, timeout)

    def _write_pids(self) -> None:
        doc = {
            "demo": os.getpid(),
            "children": {c.name: c.pid for c in self.children},
        }
        self.pids_file.write_text(json.dumps(doc, indent=2) + "\n")


def _signal_group(child: Child, sig: signal.Signals) -> None:
    # The child leads its own session, so its pid is its process group id; killpg on a
    # group that is gone raises ProcessLookupError, which is what we want to ignore.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)
