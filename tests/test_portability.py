"""The site's telemetry path runs on Windows too (issue 17, item 4): no POSIX-only call
without a fallback. Static scan of site_node (training and the systemd command aside),
fedmq_runtime and schemas, plus the fallbacks themselves."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from site_node.sources.system import read_metric
from site_node.state import pid_alive

REPO = Path(__file__).resolve().parents[1]
SCOPE = ("site_node", "fedmq_runtime", "schemas")
# Not the telemetry path: training (torch/syft workers; Linux only, docs/windows.md) and
# the systemd unit command (Linux only; it refuses elsewhere with a pointer to the doc).
OUT_OF_SCOPE = ("site_node/training/", "site_node/cli/service.py")
POSIX_MODULES = {"fcntl", "pty", "termios", "pwd", "grp", "resource", "posix", "tty"}
POSIX_OS = {
    "fchmod", "fchown", "chown", "lchown", "getuid", "geteuid", "getgid", "getegid",
    "getloadavg", "kill", "killpg", "fork", "forkpty", "setsid", "getpgid", "setpgid",
    "sync", "nice", "statvfs", "fstatvfs", "uname", "mkfifo", "O_DIRECTORY", "O_NOFOLLOW",
    "getpwnam", "sched_setaffinity", "sched_getaffinity",
}  # fmt: skip
POSIX_SIGNAL = {
    "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGPIPE", "SIGQUIT",
    "SIGSTOP", "SIGCONT", "alarm", "pause", "setitimer", "siginterrupt", "pthread_kill",
}  # fmt: skip
# (path, name): known uses, each with why it is acceptable or who guards it.
ALLOWED: dict[tuple[str, str], str] = {
    ("site_node/history/export.py", "os.fchmod"): (
        "guarded by hasattr(os, 'fchmod') (POSIX; on Windows mkstemp's file is private)"
    ),
    ("site_node/command_guard.py", "'/proc/self/maps'"): (
        "finds the ssl module's libcrypto inside try/except OSError: without /proc the "
        "cryptography package verifies signatures (tested on both backends)"
    ),
}


def _files() -> list[Path]:
    out = []
    for top in SCOPE:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if not rel.startswith(OUT_OF_SCOPE):
                out.append(path)
    return out


def _violations(path: Path) -> list[str]:
    rel = path.relative_to(REPO).as_posix()
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), rel)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [
                a.name.split(".")[0] for a in node.names if a.name.split(".")[0] in POSIX_MODULES
            ]
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in POSIX_MODULES
        ):
            names = [str(node.module)]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            base = node.value.id
            if (base == "os" and node.attr in POSIX_OS) or (
                base == "signal" and node.attr in POSIX_SIGNAL
            ):
                names = [f"{base}.{node.attr}"]
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("/proc")
        ):
            names = [repr(node.value[:20])]
        line = getattr(node, "lineno", 0)
        found += [f"{rel}:{line}: {n}" for n in names if (rel, n) not in ALLOWED]
    return found


def test_the_scan_finds_posix_only_calls() -> None:
    # The scan can fail: it sees the calls it looks for (training is out of scope).
    limits = REPO / "site_node/training/worker/limits.py"
    if limits.exists():
        assert any("/proc" in v for v in _violations(limits))
    sample = REPO / "site_node/cli/service.py"
    assert any("pwd" in v or "os.chown" in v for v in _violations(sample))


def test_no_unguarded_posix_only_call_on_the_telemetry_path() -> None:
    found = [v for path in _files() for v in _violations(path)]
    assert not found, "POSIX-only calls without a fallback:\n" + "\n".join(found)


def test_allow_list_entries_still_exist() -> None:
    for (rel, name), _why in ALLOWED.items():
        path = REPO / rel
        if path.exists():
            assert any(name in v for v in _violations_unfiltered(path)), (rel, name)


def _violations_unfiltered(path: Path) -> list[str]:
    saved = dict(ALLOWED)
    ALLOWED.clear()
    try:
        return _violations(path)
    finally:
        ALLOWED.update(saved)


def test_pid_alive_answers_for_live_and_dead_processes() -> None:
    # It probes with psutil (os.kill(pid, 0) would send CTRL_C_EVENT on Windows; the scan
    # above keeps os.kill out of the telemetry path).
    assert pid_alive(os.getpid())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert not pid_alive(int(dead.stdout))
    assert not pid_alive(0)


def test_load_average_comes_from_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    # os.getloadavg does not exist on Windows; psutil emulates it there.
    monkeypatch.delattr(os, "getloadavg")
    value = read_metric("load1")
    assert value is not None and value >= 0
