"""Run ``fedmq-site run`` as a real subprocess with a generated TOML and its own data dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# The entry point installed with the interpreter running the tests (whatever its venv is
# called or wherever it lives); not resolved, so a venv's symlinked python keeps its bin/.
SITE_BIN = Path(sys.executable).parent / "fedmq-site"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(settings: dict[str, Any]) -> str:
    """A tiny TOML writer for test configs (tables and arrays of tables one level deep)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in settings.items() if not _is_table(v)]
    for key, value in settings.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def _is_table(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


class SiteProc:
    """One site daemon process; ``kill()`` at teardown always (see the fixtures)."""

    def __init__(self, workdir: Path, settings: dict[str, Any], suite_nice: bool = True) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if suite_nice and isinstance(settings.get("training"), dict):
            # Production's nice 10 lets training yield to the plant's software; here the
            # "plant" is the rest of the suite (load ~10 in CI), beside which a nice-10
            # worker gets a few percent of a core and starts syft in minutes. Tests that
            # are about the nice level set it; benchmarks keep the defaults (False).
            settings["training"].setdefault("nice", 0)
            scoring = settings.setdefault("scoring", {})
            if isinstance(scoring, dict):
                scoring.setdefault("nice", 0)
        self.settings = settings
        self.data_dir = Path(settings["data_dir"])
        self.config = self.workdir / "site.toml"
        self.config.write_text(to_toml(settings))
        self.log = self.workdir / "site.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SiteProc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(SITE_BIN), "run", "--config", str(self.config), "--verbose"],
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.workdir,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no clean disconnect, the broker publishes the Will."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another ``fedmq-site`` command against the same config."""
        return subprocess.run(
            [str(SITE_BIN), *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=self.workdir,
        )

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--json")
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return
            if not self.alive():
                break
            time.sleep(0.05)
        sys.stderr.write(self.log_text()[-3000:])
        raise AssertionError(f"{needle!r} not in the site log within {timeout}s")


def counter_file(path: Path, rows: int) -> Path:
    """A one-column CSV 0..rows-1: every sample's value says which row it was."""
    path.write_text("".join(f"{i}\n" for i in range(rows)))
    return path


def site_settings(
    tmp_path: Path,
    port: int,
    prefix: str,
    site_id: str = "site-a",
    rate_hz: float = 20.0,
    rows: int = 1_000_000,
    **overrides: Any,
) -> dict[str, Any]:
    """Settings of a test site fed by a counter file replayed at ``rate_hz``."""
    data = counter_file(tmp_path / f"{site_id}-counter.csv", rows)
    settings: dict[str, Any] = {
        "site_id": site_id,
        "data_dir": str(tmp_path / f"{site_id}-data"),
        "name": "Test site",
        "heartbeat_interval_s": 1.0,
        "batch_max_samples": 10,
        "batch_max_wait_s": 0.2,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": prefix, "keepalive": 5},
        "outbox": {"ack_timeout_s": 60.0, "replay_rate": 20000.0, "synchronous": "NORMAL"},
        "devices": [
            {
                "name": "counter",
                "source": "file",
                "path": str(data),
                "format": "csv",
                "columns": [{"name": "n", "unit": "count"}],
                "rate_hz": rate_hz,
            }
        ],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return settings


@pytest.fixture(name="make_site")
def make_site_fixture(tmp_path: Path) -> Iterator[Callable[..., SiteProc]]:
    """Factory of started site processes (same site id -> same data dir); all killed after."""
    procs: list[SiteProc] = []

    def make(port: int, prefix: str, start: bool = True, **overrides: Any) -> SiteProc:
        proc = SiteProc(
            tmp_path / f"proc{len(procs)}", site_settings(tmp_path, port, prefix, **overrides)
        )
        procs.append(proc)
        return proc.start() if start else proc

    yield make
    for p in procs:
        p.kill()
