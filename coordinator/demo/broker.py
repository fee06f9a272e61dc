"""The demo's own Mosquitto: the shipped dev config on a free loopback port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from pathlib import Path

from coordinator.demo.procs import Child, Supervisor

__all__ = ["INSTALL_HINT", "BrokerMissing", "find_mosquitto", "free_port", "start_broker"]

INSTALL_HINT = (
    "mosquitto is not installed: run `apt-get install -y mosquitto` (Debian/Ubuntu; "
    "`brew install mosquitto` on macOS), or `bash .ci/setup` in a clone"
)

# broker_config/ lives next to the packages in a clone (and an editable install).
_REPO_CONF = Path(__file__).resolve().parents[2] / "broker_config" / "mosquitto-dev.conf"
_LISTENER = "listener 1883 127.0.0.1"

# Used only where the package was installed without the repository's broker_config/:
# the essentials of mosquitto-dev.conf (loopback only, anonymous, large queues, no size
# limit for weight chunks).
_FALLBACK_CONF = f"""\
per_listener_settings false
{_LISTENER}
allow_anonymous true
persistence false
max_queued_messages 100000
max_inflight_messages 0
message_size_limit 0
max_keepalive 3600
log_dest stderr
log_type error
log_type warning
log_type notice
connection_messages true
"""


class BrokerMissing(RuntimeError):
    """No ``mosquitto`` binary on this machine (the message says how to install it)."""


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH or in the usual sbin folders (not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in (
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/opt/homebrew/sbin/mosquitto",
    ):
        if Path(path).exists():
            return path
    return None


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def start_broker(workdir: Path, logs: Path, supervisor: Supervisor, timeout: float = 15.0) -> int:
    """Write the config, start mosquitto under ``supervisor``; return its port.

    Raises:
        BrokerMissing: no mosquitto binary.
        RuntimeError: it exited or did not listen within ``timeout`` s (log tail included).
    """
    binary = find_mosquitto()
    if binary is None:
        raise BrokerMissing(INSTALL_HINT)
    base = _REPO_CONF.read_text() if _REPO_CONF.is_file() else _FALLBACK_CONF
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(base.replace(_LISTENER, f"listener {port} 127.0.0.1"))
    child = supervisor.spawn("broker", [binary, "-c", str(conf)], logs / "mosquitto.log", workdir)
    _wait_listening(child, port, timeout)
    return port


def _wait_listening(child: Child, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(
                f"mosquitto exited at start (see {child.log}): {child.log_tail(300)}"
            )
        if _listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on port {port} within {timeout:.0f} s")
