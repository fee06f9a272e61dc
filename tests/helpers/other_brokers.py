"""Real NATS and RabbitMQ brokers with MQTT enabled, for tests (Debian's packages).

Both speak MQTT 3.1.1 only (nats-server 2.9 answers an MQTT 5 CONNECT with CONNACK
"unsupported protocol version"; RabbitMQ 3.10 closes the connection before any CONNACK),
which is what the sites' ``protocol = "auto"`` must cope with.

Use them as context managers; each yields an object with ``host``, ``port`` (MQTT) and
``add_user``::

    with nats_broker(tmp_path / "nats") as b:          # anonymous MQTT allowed
        b.add_user("site-a", "pw")                     # rewrites the config, reloads
        client = TestClient(b.port, username="site-a", password="pw",
                            protocol=mqtt.MQTTv311).connect()

    with rabbitmq_broker(tmp_path / "rabbit") as b:    # ~10 s to boot: scope it widely
        b.add_user("site-a", "pw", write="^fedmq\\.v1\\.", read=".*")  # topic permissions
        b.ctl("list_users")                            # any rabbitmqctl command
        subprocess.run(["sh", "script.sh"], env=b.env) # rabbitmqctl scripts reach this node

NATS: ``add_user(name, password, permissions={...})`` takes a NATS permissions map
(subjects, with MQTT's ``/`` as ``.``); ``set_auth(text)`` replaces the whole auth part
of the config (e.g. a generated accounts file) and reloads. Prefer users given at start
(``nats_broker(dir, users={...})``): nats-server 2.9 was seen not to finish a second
reload while MQTT clients were connected (the helper then raises after 15 s). RabbitMQ: users get
``configure/write/read`` on vhost ``/`` (default ``.*``) and, when given, topic permissions
on the ``amq.topic`` exchange (routing keys: MQTT's ``/`` is ``.``).

Each broker lives in its own directory on free ports (RabbitMQ: its own node name, Erlang
cookie, distribution port and epmd), so several can run side by side and beside a system
broker. ``stop()`` ends the processes it started and waits for the ports to close.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.broker import free_port, port_open

__all__ = [
    "NatsBroker",
    "RabbitBroker",
    "mqtt_connack",
    "nats_broker",
    "rabbitmq_broker",
]

NATS_HINT = "nats-server is not installed: run `apt-get install -y nats-server` (Debian/Ubuntu)"
RABBIT_HINT = (
    "rabbitmq-server is not installed: run `apt-get install -y rabbitmq-server` (Debian/Ubuntu)"
)
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT, clean session, no credentials, keepalive 10 s."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


def mqtt_connack(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> int | None:
    """Send an anonymous MQTT 3.1.1 CONNECT; the CONNACK return code, or None (no CONNACK).

    Any CONNACK (even "not authorized") proves the MQTT listener is serving, which an open
    TCP port alone does not (RabbitMQ opens it before the plugin is ready).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(_connect_packet(f"probe-{uuid.uuid4().hex[:8]}"))
            data = b""
            while len(data) < 4:
                chunk = s.recv(4 - len(data))
                if not chunk:
                    return None
                data += chunk
            if data[0] != 0x20:
                return None
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT
            return data[3]
    except OSError:
        return None


def _wait_connack(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited ({proc.returncode}): {_tail(log)}")
        if mqtt_connack(port) is not None:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no MQTT CONNACK on port {port} within {timeout} s: {_tail(log)}")


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-3000:]
    return "(no log)"


def _end(proc: subprocess.Popen[bytes] | None, port: int, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.05)


# --------------------------------------------------------------------------- NATS


@dataclass
class NatsBroker:
    """nats-server with JetStream and its MQTT listener on ``port`` (loopback)."""

    workdir: Path
    anonymous: bool = True
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    nats_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    users: dict[str, dict[str, object]] = field(default_factory=dict)
    auth_text: str | None = None

    def __post_init__(self) -> None:
        binary = shutil.which("nats-server") or (
            "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
        )
        if binary is None:
            raise RuntimeError(NATS_HINT)
        self.binary = binary
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "nats.conf"
        self.log = self.workdir / "nats.log"
        self.name = f"fedmq-test-{uuid.uuid4().hex[:8]}"
        self._anon_password = uuid.uuid4().hex

    def config_text(self) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.nats_port}",
            f'jetstream {{ store_dir: "{self.workdir / "js"}" }}',
            f"mqtt {{ listen: 127.0.0.1:{self.port} }}",
        ]
        if self.auth_text is not None:
            lines.append(self.auth_text)
        else:
            # Always an authorization block (and no_auth_user when anonymous): nats-server
            # cannot reload a change of no_auth_user, only a change of the users.
            users = [{"user": n, **spec} for n, spec in self.users.items()]
            if self.anonymous:
                users.append({"user": "anonymous", "password": self._anon_password})
                lines.append("no_auth_user: anonymous")
            lines.append(f"authorization {{ users = {json.dumps(users)} }}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30.0) -> NatsBroker:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.conf.write_text(self.config_text())
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=log, stderr=log, cwd=self.workdir
        )
        log.close()
        _wait_connack(self.proc, self.port, self.log, timeout)
        return self

    def add_user(
        self, name: str, password: str, permissions: dict[str, object] | None = None
    ) -> None:
        """Add (or replace) an MQTT user; ``permissions``: a NATS permissions map."""
        spec: dict[str, object] = {"password": password}
        if permissions is not None:
            spec["permissions"] = permissions
        self.users[name] = spec
        self.reload()

    def set_auth(self, text: str) -> None:
        """Replace the auth part of the config with ``text`` (NATS config syntax)."""
        self.auth_text = text
        self.reload()

    def reload(self, timeout: float = 15.0) -> None:
        """Rewrite the config and make the running server apply it (SIGHUP)."""
        self.conf.write_text(self.config_text())
        if self.proc is None or self.proc.poll() is not None:
            return
        before = self.log.read_text(errors="replace").count("Reloaded server configuration")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if text.count("Reloaded server configuration") > before:
                return
            if "Failed to reload" in text[-2000:]:
                raise RuntimeError(f"nats-server refused the config: {_tail(self.log)}")
            time.sleep(0.05)
        raise RuntimeError(f"nats-server did not reload within {timeout} s: {_tail(self.log)}")

    def stop(self) -> None:
        _end(self.proc, self.port)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def nats_broker(
    workdir: Path, anonymous: bool = True, users: dict[str, dict[str, object]] | None = None
) -> Iterator[NatsBroker]:
    """``users``: name -> {"password": ..., "permissions": {...}}, in the config at start."""
    b = NatsBroker(workdir, anonymous=anonymous, users=dict(users or {})).start()
    try:
        yield b
    finally:
        b.stop()


# --------------------------------------------------------------------------- RabbitMQ


@dataclass
class RabbitBroker:
    """rabbitmq-server with rabbitmq_mqtt on ``port``; no AMQP listener; own node + epmd."""

    workdir: Path
    anonymous: bool = True
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            raise RuntimeError(RABBIT_HINT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node = f"fedmqtest{uuid.uuid4().hex[:8]}@localhost"
        self.log = self.workdir / "rabbitmq.log"
        w = self.workdir
        (w / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (w / "rabbitmq.conf").write_text(
            "listeners.tcp = none\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"mqtt.allow_anonymous = {'true' if self.anonymous else 'false'}\n"
            "mqtt.vhost = /\n"
            "mqtt.exchange = amq.topic\n"
            "log.console = true\n"
            "log.console.level = warning\n"
            "log.file = false\n"
        )
        # The Erlang cookie lives in $HOME; rabbitmqctl needs the same one.
        self.env = {
            **os.environ,
            "HOME": str(w),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(w / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_ENV_CONFIG_FILE": str(w / "rabbitmq-env.conf"),
        }
        (w / "rabbitmq-env.conf").write_text("")

    def start(self, timeout: float = 120.0) -> RabbitBroker:
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")],
            stdout=log,
            stderr=log,
            cwd=self.workdir,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        try:
            _wait_connack(self.proc, self.port, self.log, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl ARGS`` against this node; its stdout (raises on failure)."""
        out = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {out.stdout}{out.stderr}")
        return out.stdout

    def add_user(
        self,
        name: str,
        password: str,
        configure: str = ".*",
        write: str = ".*",
        read: str = ".*",
        topic_write: str | None = None,
        topic_read: str | None = None,
    ) -> None:
        """Add a user with vhost permissions and, when given, amq.topic topic permissions."""
        self.ctl("add_user", name, password)
        self.ctl("set_permissions", "-p", "/", name, configure, write, read)
        if topic_write is not None or topic_read is not None:
            self.ctl(
                "set_topic_permissions",
                "-p",
                "/",
                name,
                "amq.topic",
                topic_write if topic_write is not None else "^$",
                topic_read if topic_read is not None else "^$",
            )

    def stop(self) -> None:
        """SIGTERM the node (a clean shutdown), then end its private epmd."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            _end(self.proc, self.port)
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        if Path(epmd).exists():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    [epmd, "-port", str(self.epmd_port), "-kill"],
                    env=self.env,
                    capture_output=True,
                    timeout=10,
                )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def rabbitmq_broker(workdir: Path, anonymous: bool = True) -> Iterator[RabbitBroker]:
    b = RabbitBroker(workdir, anonymous=anonymous).start()
    try:
        yield b
    finally:
        b.stop()
