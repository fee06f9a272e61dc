"""A real Mosquitto process for tests: start, stop, kill -9 and restart on the same port."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEV_CONF = REPO / "broker_config" / "mosquitto-dev.conf"
INSTALL_HINT = (
    "mosquitto is not installed: run `apt-get install -y mosquitto` (Debian/Ubuntu) "
    "or `brew install mosquitto` (macOS); the tests need a real broker"
)


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def dev_config(port: int, extra: str = "") -> str:
    """The shipped dev config with its listener moved to ``port``."""
    text = DEV_CONF.read_text().replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
    return text + ("\n" + extra if extra else "")


@dataclass
class Broker:
    """One mosquitto on a fixed loopback port; survives restarts on that port."""

    workdir: Path
    config_text: str | None = None
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.binary = find_mosquitto()
        if self.binary is None:
            raise RuntimeError(INSTALL_HINT)
        self.conf = self.workdir / "mosquitto.conf"
        text = self.config_text if self.config_text is not None else dev_config(self.port)
        self.conf.write_text(text.replace("{port}", str(self.port)))
        self.log = self.workdir / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "-c", str(self.conf)], stdout=log, stderr=log, cwd=self.workdir
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            if port_open(self.port, self.host):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        """Graceful stop (SIGTERM), waiting until the port is free."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """kill -9: no clean disconnects, no persistence flush."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + 5
        while port_open(self.port, self.host) and time.monotonic() < deadline:
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
