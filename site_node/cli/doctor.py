"""``fedmq-site doctor``: check a site's configuration and its path to the coordinator.

One line per check, in the order a site depends on them; a check whose prerequisite
failed is skipped (so exactly the failing check is named). The broker is reached through
:class:`site_node.bus.BrokerProbe` (this module never imports paho).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from fedmq_runtime.cli import EXIT

__all__ = ["CHECKS", "Check", "doctor", "run_checks"]

# In the order they run; a failed check skips the ones that need it.
CHECKS = (
    "config", "dns", "tcp", "tls", "connack", "acl", "coordinator", "signing-key",
    "clock", "disk", "serial", "training",
)  # fmt: skip
NEEDS: dict[str, tuple[str, ...]] = {
    "dns": ("config",),
    "tcp": ("dns",),
    "tls": ("tcp",),
    "connack": ("tls",),
    "acl": ("connack",),
    "coordinator": ("connack",),
    "signing-key": ("coordinator",),
    "clock": ("connack",),
    "disk": ("config",),
    "serial": ("config",),
    "training": ("config",),
}
PROBE_DEVICE = "doctor-probe"
CERT_WARN_DAYS = 14


@dataclass
class Check:
    name: str
    state: str  # ok | FAIL | WARN | skip
    detail: str
    blocks: bool = False  # the checks that need this one cannot run

    def line(self) -> str:
        return f"{self.state:<4} {self.name:<11} {self.detail}"


@dataclass
class Context:
    config: Path
    timeout: float
    while_running: bool
    settings: Any = None
    probe: Any = None
    status: Any = None  # the coordinator's decoded retained status
    results: dict[str, Check] = field(default_factory=dict)


class Failed(Exception):
    """A check failed; ``str(exc)`` says why."""


class Skipped(Exception):
    """A check does not apply; ``str(exc)`` says why. ``blocks``: the checks that need
    this one are skipped too (False when there was nothing to check, e.g. TLS off)."""

    def __init__(self, why: str, blocks: bool = True) -> None:
        super().__init__(why)
        self.blocks = blocks


class Warned(Exception):
    """A check could not prove its point; ``str(exc)`` says what (not a failure)."""


# --- the checks: each returns its detail (ok) or raises Failed / Skipped ----------------


def _config(ctx: Context) -> str:
    from fedmq_runtime.settings import SettingsError
    from site_node.settings import load_site_settings

    try:
        ctx.settings = load_site_settings(ctx.config)
    except SettingsError as exc:
        raise Failed(str(exc)) from None
    s = ctx.settings
    return (
        f"{ctx.config}: site {s.site_id}, {len(s.devices)} device(s), broker "
        f"{s.mqtt.host}:{s.mqtt.port} (MQTT {s.mqtt.protocol}, tls {'on' if s.mqtt.tls else 'off'})"
    )


def _dns(ctx: Context) -> str:
    m = ctx.settings.mqtt
    try:
        infos = socket.getaddrinfo(m.host, m.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Failed(f"{m.host} does not resolve: {exc.strerror}") from None
    addrs = sorted({str(i[4][0]) for i in infos})
    return f"{m.host} -> {', '.join(addrs[:4])}"


def _tcp(ctx: Context) -> str:
    m = ctx.settings.mqtt
    start = time.monotonic()
    try:
        with socket.create_connection((m.host, m.port), timeout=ctx.timeout):
            pass
    except OSError as exc:
        raise Failed(f"{m.host}:{m.port}: {exc.strerror or exc} (is the broker running?)") from None
    return f"{m.host}:{m.port} accepts connections ({(time.monotonic() - start) * 1000:.0f} ms)"


def _tls(ctx: Context) -> str:
    from fedmq_runtime.broker_connection import connection_options
    from fedmq_runtime.settings import SettingsError

    m = ctx.settings.mqtt
    if not m.tls:
        raise Skipped("mqtt.tls = false (plain TCP: use TLS off a trusted network)", False)
    try:
        context = connection_options(m).tls
    except (SettingsError, ValueError) as exc:
        raise Failed(str(exc)) from None
    assert context is not None
    try:
        with (
            socket.create_connection((m.host, m.port), timeout=ctx.timeout) as raw,
            context.wrap_socket(raw, server_hostname=m.host) as tls,
        ):
            cert = tls.getpeercert() or {}
            version = tls.version()
    except ssl.SSLCertVerificationError as exc:
        raise Failed(f"certificate not trusted: {exc.verify_message or exc}") from None
    except (OSError, ssl.SSLError) as exc:
        raise Failed(f"TLS handshake failed: {exc}") from None
    subject = ", ".join("=".join(part) for rdn in cert.get("subject", ()) for part in rdn)
    not_after = cert.get("notAfter")
    expiry = ""
    if isinstance(not_after, str):
        ends = ssl.cert_time_to_seconds(not_after)
        days = (ends - time.time()) / 86400
        when = datetime.fromtimestamp(ends, timezone.utc).strftime("%Y-%m-%d")
        expiry = f", expires {when} ({days:.0f} days)"
        if days < CERT_WARN_DAYS:
            raise Failed(f"certificate {subject} expires {when}: in {days:.1f} days")
    return f"{version}, certificate {subject or '(no subject)'} verified{expiry}"


def _connack(ctx: Context) -> str:
    from site_node.bus import BrokerProbe, BusError
    from site_node.state import SiteState, pid_alive

    s = ctx.settings
    state = SiteState.read(s.state_path)
    if pid_alive(state.pid) and not ctx.while_running:
        raise Skipped(
            f"the site daemon is running (pid {state.pid}): the doctor's own connection "
            "could take its session over (brokers that use the username as client id); "
            "stop it, or pass --while-running"
        )
    ctx.probe = BrokerProbe(s.mqtt, f"{s.site_id}-doctor-{uuid.uuid4().hex[:6]}")
    try:
        code, reason = ctx.probe.connect(ctx.timeout)
    except BusError as exc:
        raise Failed(f"connection failed: {exc}") from None
    except ValueError as exc:  # credentials or TLS settings that cannot work
        raise Failed(str(exc)) from None
    user = s.mqtt.username or "(anonymous)"
    if code is None:
        raise Failed(f"the broker closed the connection before CONNACK ({reason}) as {user}")
    if code != 0:
        raise Failed(f"refused as {user}: {reason} (reason code {code})")
    return f"accepted as {user} (MQTT {ctx.probe.protocol})"


def _acl(ctx: Context) -> str:
    from schemas import Topics

    s, probe = ctx.settings, ctx.probe
    t = Topics(s.mqtt.prefix)
    denied: list[str] = []
    reads = {"commands": t.site_commands(s.site_id), "acks": t.ack(s.site_id)}
    for what, topic in reads.items():
        rc = probe.subscribe_rc(topic, ctx.timeout)
        if rc is None or rc >= 0x80:
            denied.append(f"read {what} {topic} ({_code(rc, probe)})")
    topic = t.telemetry(s.site_id, PROBE_DEVICE)
    v5 = probe.protocol == "5"
    echo = None if v5 or probe.closed else probe.subscribe_rc(topic, ctx.timeout)
    if not probe.closed:
        # An empty payload: nothing a consumer could take for data (the coordinator files
        # it as a dead letter "empty payload", naming the probe device).
        rc = probe.publish_rc(topic, b"", ctx.timeout)
        if rc is None or rc >= 0x80:
            denied.append(f"publish telemetry {topic} ({_code(rc, probe)})")
    if denied:
        raise Failed("denied: " + "; ".join(denied))
    if v5:
        return "publish telemetry, read commands and acks granted (PUBACK/SUBACK reason codes)"
    # MQTT 3.1.1 PUBACKs carry no reason: a broker may drop a denied publish and still
    # PUBACK it (NATS does). Our own probe coming back proves it was accepted.
    if echo is not None and echo < 0x80:
        if probe.wait_message(topic, min(ctx.timeout, 3.0)):
            return "publish telemetry (its probe came back), read commands and acks granted"
        if s.mqtt.protocol == "auto":
            # auto fell back: the broker speaks 3.1.1 only (NATS, RabbitMQ), and those
            # refuse a subscription they would not deliver, so the read was granted and
            # the publish was dropped.
            raise Failed(
                f"denied: publish telemetry {topic} (PUBACKed, but the probe never came "
                "back to its granted subscription: the broker dropped it)"
            )
    raise Warned(
        "read commands and acks granted; publish telemetry NOT PROVEN: MQTT 3.1.1 has no "
        "PUBACK reason code and the probe did not come back (a denied publish is dropped "
        "silently by NATS; or this account may not read its own telemetry)"
    )


def _code(rc: int | None, probe: Any) -> str:
    if rc is None:
        return f"connection closed: {probe.closed}" if probe.closed else "no answer"
    return "not authorized" if rc in (0x80, 0x87) else f"reason code {rc}"


def _reopen(ctx: Context) -> None:
    """A new connection when the broker closed ours (RabbitMQ, after a denied publish)."""
    if ctx.probe.closed is None:
        return
    ctx.probe.close()
    code, reason = ctx.probe.connect(ctx.timeout)
    if code != 0:
        raise Failed(f"could not connect again: {reason}")


def _coordinator(ctx: Context) -> str:
    from schemas import CoordinatorStatus, Topics
    from schemas.codec import Codec

    _reopen(ctx)
    s, probe = ctx.settings, ctx.probe
    topic = Topics(s.mqtt.prefix).coordinator_status()
    rc = probe.subscribe_rc(topic, ctx.timeout)
    if rc is None or rc >= 0x80:
        raise Failed(f"cannot read {topic} ({_code(rc, probe)})")
    msg = probe.wait_message(topic, ctx.timeout)
    if msg is None:
        raise Failed(
            f"no retained status on {topic} within {ctx.timeout:g} s: fedmq serve has never "
            "connected to this broker with this prefix"
        )
    try:
        status = Codec(Topics(s.mqtt.prefix)).decode(topic, msg.payload)
    except Exception as exc:
        raise Failed(f"unreadable status on {topic}: {exc}") from None
    if not isinstance(status, CoordinatorStatus):
        raise Failed(f"unexpected message on {topic}")
    ctx.status = status
    since = _ago(status.ts)
    if status.state != "online":
        raise Failed(f"offline since {since} (session {status.session})")
    return f"online since {since} (session {status.session})"


def _signing_key(ctx: Context) -> str:
    from schemas.commands import public_key_id

    s, status = ctx.settings, ctx.status
    announced = status.key_id
    if s.coordinator_public_key_file is None:
        if s.training is not None:
            raise Failed("no coordinator_public_key_file pinned: every train command is refused")
        raise Skipped("no coordinator_public_key_file pinned (only needed to train)")
    try:
        pinned = public_key_id(Path(s.coordinator_public_key_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise Failed(f"pinned key {s.coordinator_public_key_file}: {exc}") from None
    if not announced:
        raise Failed(
            f"the coordinator announces no signing key (pinned {pinned}): fedmq serve runs "
            "without --signing-key, or predates key ids"
        )
    if announced != pinned:
        raise Failed(
            f"pinned key {pinned} ({s.coordinator_public_key_file}) is not the coordinator's "
            f"{announced}: its signed commands would be refused"
        )
    return f"pinned key {pinned} is the coordinator's"


def _clock(ctx: Context) -> str:
    from schemas import Ack, Topics
    from schemas.codec import Codec

    s, probe = ctx.settings, ctx.probe
    tolerance = s.command_clock_skew_s
    topic = Topics(s.mqtt.prefix).ack(s.site_id)
    # Acks carry the coordinator's clock; they flow while the daemon publishes.
    msg = probe.wait_message(topic, min(ctx.timeout, 3.0))
    ack = None
    if msg is not None:
        with contextlib.suppress(Exception):
            ack = Codec(Topics(s.mqtt.prefix)).decode(topic, msg.payload)
    if isinstance(ack, Ack):
        skew = time.time() - ack.ts / 1000
        if abs(skew) > tolerance:
            raise Failed(
                f"this clock is {skew:+.1f} s off the coordinator's (an ack), more "
                f"than command_clock_skew_s = {tolerance:g}: run NTP"
            )
        return f"{skew:+.1f} s against the coordinator (an ack; tolerance {tolerance:g} s)"
    status = ctx.status
    if status is not None:
        ahead = status.ts / 1000 - time.time()
        if ahead > tolerance:
            raise Failed(
                f"the coordinator's status is stamped {ahead:.0f} s in this clock's future: "
                f"the clocks differ by more than command_clock_skew_s = {tolerance:g}"
            )
        return (
            "no evidence of skew (the coordinator's status is not from this clock's future; "
            "a live measure needs acks: run with the daemon and --while-running)"
        )
    raise Skipped("no coordinator timestamp seen")


def _disk(ctx: Context) -> str:
    s = ctx.settings
    where = Path(s.data_dir).resolve()
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = s.outbox.max_bytes + (s.history.max_bytes if s.history.enabled else 0)
    if not os.access(probe, os.W_OK):
        raise Failed(f"{probe} is not writable (data_dir {where})")
    text = f"{_size(free)} free at {probe}; outbox and history may use {_size(need)}"
    if free < need:
        raise Failed(text + ": lower outbox.max_bytes / history.max_bytes or free space")
    return text


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _serial(ctx: Context) -> str:
    ports = [(d.name, d.port) for d in ctx.settings.devices if d.source == "serial"]
    if not ports:
        raise Skipped("no serial devices")
    bad: list[str] = []
    good: list[str] = []
    for name, port in ports:
        if "://" in port:
            good.append(f"{name} {port} (URL, not checked)")
            continue
        problem = _port_problem(port)
        (bad if problem else good).append(f"{name} {port}" + (f": {problem}" if problem else ""))
    if bad:
        raise Failed("; ".join(bad))
    return "present and readable: " + ", ".join(good)


def _port_problem(port: str) -> str | None:
    if os.name == "nt":
        from serial.tools import list_ports

        names = {p.device.upper() for p in list_ports.comports()}
        return None if port.upper() in names else f"not present (ports: {sorted(names)})"
    path = Path(port)
    if not path.exists():
        return "not present"
    if not os.access(path, os.R_OK | os.W_OK):
        return "not readable by this user (add it to the dialout group)"
    return None


def _training(ctx: Context) -> str:
    if ctx.settings.training is None:
        raise Skipped("no [training] table")
    missing = [m for m in ("torch", "syft") if importlib.util.find_spec(m) is None]
    if missing:
        raise Failed(
            f"[training] is set but {', '.join(missing)} missing: pip install 'fedmq[train]'"
        )
    return "torch and syft installed (not imported)"


def _ago(ts_ms: int) -> str:
    when = datetime.fromtimestamp(ts_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{when} ({max(0.0, time.time() - ts_ms / 1000):.0f} s ago)"


RUN: dict[str, Callable[[Context], str]] = {
    "config": _config, "dns": _dns, "tcp": _tcp, "tls": _tls, "connack": _connack,
    "acl": _acl, "coordinator": _coordinator, "signing-key": _signing_key, "clock": _clock,
    "disk": _disk, "serial": _serial, "training": _training,
}  # fmt: skip


def run_checks(
    config: Path,
    timeout: float = 5.0,
    while_running: bool = False,
    echo: Callable[[str], None] = click.echo,
) -> list[Check]:
    """Run every check in order, echoing one line each; the results."""
    ctx = Context(config, timeout, while_running)
    try:
        for name in CHECKS:
            blocked = [n for n in NEEDS.get(name, ()) if ctx.results[n].blocks]
            if blocked:
                result = Check(name, "skip", f"needs {', '.join(blocked)}", blocks=True)
            else:
                try:
                    result = Check(name, "ok", RUN[name](ctx))
                except Failed as exc:
                    result = Check(name, "FAIL", str(exc), blocks=True)
                except Skipped as exc:
                    result = Check(name, "skip", str(exc), blocks=exc.blocks)
                except Warned as exc:
                    result = Check(name, "WARN", str(exc))
            ctx.results[name] = result
            echo(result.line())
    finally:
        if ctx.probe is not None:
            ctx.probe.close()
    return list(ctx.results.values())


@click.command()
@click.option("--config", "config", required=True, type=click.Path(path_type=Path),
              help="The site's TOML settings (as fedmq-site run).")  # fmt: skip
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Seconds to wait for each broker answer.")  # fmt: skip
@click.option("--while-running", is_flag=True,
              help="Check the broker even while the site daemon runs (see below).")  # fmt: skip
def doctor(config: Path, timeout: float, while_running: bool) -> None:
    """Check everything a site needs, one line per check; exit 1 naming the failures.

    Each line: ok, FAIL, WARN (could not be proven; not a failure) or skip, the check's
    name and what was found.

    \b
    Checks, in order (a check whose prerequisite failed is skipped):
      config       the TOML file loads and validates
      dns, tcp     the broker's name resolves and its port accepts a connection
      tls          the broker's certificate verifies (subject and expiry shown;
                   fails within 14 days of expiry)
      connack      the broker accepts these credentials (its reason code if not);
                   protocol "auto" is resolved as the daemon does
      acl          the site may read its commands and acks (SUBACK) and publish
                   telemetry: an empty QoS 1 probe on telemetry/doctor-probe (the
                   coordinator files it as a dead letter). MQTT 5 brokers answer a
                   denied publish with PUBACK 135 (Mosquitto). MQTT 3.1.1 has no
                   reason codes: RabbitMQ closes the connection (reported as denied),
                   NATS drops the publish and still PUBACKs. So on 3.1.1 the doctor
                   also subscribes to its probe topic: the probe coming back proves
                   the publish; a probe that does not come back to a granted
                   subscription on a 3.1.1-only broker (auto fell back) is denied;
                   when the site may not read its own telemetry (SUBACK refused, or
                   protocol = "3.1.1" set on a broker that speaks 5), a WARN.
                   Mosquitto 2 checks reads when delivering, so a granted SUBACK
                   there does not prove the read right either.
      coordinator  fedmq serve's retained status is online
      signing-key  the key pinned in coordinator_public_key_file is the one serve
                   signs commands with (serve announces its key id in its status)
      clock        the offset to the coordinator's clock, from an ack (acks flow
                   while the daemon runs); otherwise only a status stamped in this
                   clock's future is caught
      disk         free space at data_dir for outbox.max_bytes + history.max_bytes
      serial       each serial device's port exists and this user may open it
      training     with [training]: torch and syft are installed (not imported)

    The doctor connects as the site's account with client id SITE-doctor-XXXXXX and a
    clean session. Brokers that use the username as client id (the shipped Mosquitto
    config) allow one connection per account: a running daemon would be disconnected
    and its session discarded. So with the daemon running the broker checks are
    skipped unless --while-running.

    \b
    Example:
        fedmq-site doctor --config site.toml
    """
    results = run_checks(config, timeout, while_running)
    failed = [r.name for r in results if r.state == "FAIL"]
    if failed:
        click.echo(f"FAILED: {', '.join(failed)}", err=True)
        raise SystemExit(EXIT["error"])
    warned = [r.name for r in results if r.state == "WARN"]
    notes = [f"warnings: {', '.join(warned)}"] if warned else []
    notes += ["some skipped"] if any(r.state == "skip" for r in results) else []
    click.echo("all checks passed" + (f" ({'; '.join(notes)})" if notes else ""))
