"""The site daemon: wires sources, batcher, outbox, bus, heartbeat and commands together.

Threads: the bus connection thread (paho callbacks enqueue into ``inbound``), the outbox
thread (owns ``outbox.db``), one thread per telemetry source, the heartbeat thread, and
the daemon's own loop (the thread calling :meth:`SiteDaemon.run`), which handles every
inbound event: connects, acks, the coordinator's status and commands. Command handlers run
on that loop and must return quickly (hand long work to an own thread).
"""

from __future__ import annotations

import functools
import importlib
import logging
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from pydantic import BaseModel

from schemas import (
    Ack,
    Cleared,
    Codec,
    Command,
    CoordinatorStatus,
    DecodeError,
    Envelope,
    Registration,
    Sample,
    TaskOffer,
    TelemetryBatch,
    TelemetryDevice,
    Topics,
    encode,
)
from site_node import lifecycle
from site_node.batcher import Batcher
from site_node.bus import BusEvent, Connected, Disconnected, Inbound, SiteBus
from site_node.command_guard import CommandGuard, CommandRefused, load_public_key
from site_node.heartbeat import HeartbeatSender
from site_node.history import HISTORY_FILE, History, Tap, published_sensors
from site_node.outbox import Outbox
from site_node.settings import SiteSettings
from site_node.sources import DeviceConfig, Source, SplitSource, build_source
from site_node.state import SiteState

__all__ = [
    "DEPLOYMENT_EXTENSION",
    "TRAINING_EXTENSION",
    "CommandHandler",
    "RefusalHandler",
    "SiteDaemon",
]

log = logging.getLogger(__name__)

# handler(message, raw payload); ``message`` is a verified Command, or a TrainChunk
# (unsigned: the signed train command carries the sha256 of the whole).
CommandHandler = Callable[[BaseModel, bytes], None]
# refusal(command, raw payload, reason): a command the guard refused (never executed).
RefusalHandler = Callable[[BaseModel, bytes, str], None]
# Loaded when the config has a [training] table (torch/syft stay unimported otherwise).
TRAINING_EXTENSION = "site_node.training.jobs.service:install"
# Loaded with it: deployments of trained models (same allow-list and approval mode).
DEPLOYMENT_EXTENSION = "site_node.deployment.service:install"


class SiteDaemon:
    """One site: see the module docstring. Build, then :meth:`run` on the main thread."""

    def __init__(self, settings: SiteSettings) -> None:
        self.settings = settings
        self.site_id = settings.site_id
        self.topics = Topics(settings.mqtt.prefix)
        self.codec = Codec(self.topics, settings.mqtt.max_payload)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.state = SiteState(settings.state_path)
        self.session = self.state.current.session
        self.inbound: queue.Queue[BusEvent] = queue.Queue()
        self.bus = SiteBus(
            settings.mqtt,
            settings.site_id,
            self._will,
            self.inbound,
            window=settings.outbox.inflight_window,
            backoff_min_s=settings.reconnect_min_s,
            backoff_max_s=settings.reconnect_max_s,
        )
        self.outbox = Outbox(settings.outbox_path, settings.outbox, self.bus)
        self.sources: list[Source] = [build_source(cfg) for cfg in settings.devices]
        self._device_sources = {cfg.name: cfg.source for cfg in settings.devices}
        # Devices whose samples carry recorded times: their telemetry is flagged historical
        # (a split source's devices are added as it finds them).
        self._historical = {s.device for s in self.sources if getattr(s, "historical", False)}
        self._announce_due = threading.Event()
        self.batcher = Batcher(
            self._flush_batch, settings.batch_max_samples, settings.batch_max_wait_s
        )
        # Every device's readings go to the local history; what leaves the site follows
        # the device's publish mode (site_node/history/tap.py).
        history = None
        if settings.history.enabled:
            history = History(settings.data_dir / HISTORY_FILE, settings.history)
        self.tap = Tap(self.batcher.add_row, history)
        key = None
        if settings.coordinator_public_key_file is not None:
            key = load_public_key(settings.coordinator_public_key_file)
        self._key = key
        self.guard: CommandGuard | None = None  # opened on the thread that runs the loop
        self.heartbeat = HeartbeatSender(settings.heartbeat_interval_s, self.send_heartbeat)
        self._handlers: dict[str, CommandHandler] = {
            "rebirth": lambda _m, _r: self.announce(),
            "ping": lambda _m, _r: self.send_heartbeat(),
        }
        self._tasks: Callable[[], tuple[TaskOffer, ...]] = tuple
        self._jobs_running: Callable[[], int] = lambda: 0
        # Several extensions (training jobs, deployment, scoring) add fields: merged.
        self._registration_extras: list[Callable[[], dict[str, Any]]] = []
        self._heartbeat_extras: list[Callable[[], dict[str, Any]]] = []
        # (kinds, handler): a handler with no kinds sees every refused command.
        self._refusals: list[tuple[frozenset[str], RefusalHandler]] = []
        self._on_stop: list[Callable[[], None]] = []
        self._on_connected: list[Callable[[], None]] = []
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._coordinator: tuple[str, int] | None = None
        self._stop = threading.Event()

    # -- API for extensions (training) ---------------------------------------------------

    def register_command(self, name: str, handler: CommandHandler) -> None:
        """Run ``handler`` for verified commands of kind ``name``, or for the unsigned
        chunks ``train_chunk`` / ``deploy_chunk`` (their command carries their sha256)."""
        self._handlers[name] = handler

    def set_tasks_provider(self, tasks: Callable[[], tuple[TaskOffer, ...]]) -> None:
        """What the registration advertises as ``tasks``; call :meth:`announce` on change."""
        self._tasks = tasks

    def set_jobs_running(self, count: Callable[[], int]) -> None:
        self._jobs_running = count

    def set_registration_extra(self, extra: Callable[[], dict[str, Any]]) -> None:
        """Add a provider of extra registration fields (e.g. ``datasets``,
        ``approval_mode``) read at announce; the fields of every provider are merged."""
        self._registration_extras.append(extra)

    def set_heartbeat_extra(self, extra: Callable[[], dict[str, Any]]) -> None:
        """Add a provider of extra heartbeat fields (e.g. ``worker_state``,
        ``worker_rss_mb``) read at each beat; the fields of every provider are merged."""
        self._heartbeat_extras.append(extra)

    def watch_rows(self, watcher: Callable[[str, Sequence[Sample]], None]) -> None:
        """Show every device's readings to ``watcher(device, row)``, whatever the device's
        publish mode (on the source threads: copy and return, never block or raise)."""
        self.tap.watch(watcher)

    def register_refusal(self, handler: RefusalHandler, kinds: Sequence[str] = ()) -> None:
        """Call ``handler`` (on the loop) for the commands of ``kinds`` the guard refuses
        (no kinds: every refused command). Several handlers may be registered."""
        self._refusals.append((frozenset(kinds), handler))

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the daemon loop (from any thread), within ~0.2 s."""
        self._calls.put(fn)

    def on_connected(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the loop after each (re)connect, once the retained status and
        registration are published (e.g. to republish retained state the broker may lack)."""
        self._on_connected.append(fn)

    def on_stop(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` at shutdown, before the outbox is flushed and closed."""
        self._on_stop.append(fn)

    def send_durable(self, kind: str, topic: str, make: Callable[[int], BaseModel]) -> Future[int]:
        """Store then publish a durable message; ``make(seq)`` builds it (any thread).

        Example: ``daemon.send_durable("job_status", daemon.topics.job_status(site, job),
        lambda seq: JobStatus.for_command(cmd, site=site, session=daemon.session, seq=seq,
        state="running"))``. The future resolves to the seq once the row is committed.
        The message is stamped with the stream's epoch.
        """
        return self.outbox.append(kind, topic, lambda seq: encode(self._stamp(make(seq))))

    def send_samples(
        self, topic: str, make: Callable[[int], BaseModel], samples: int
    ) -> Future[int]:
        """:meth:`send_durable` for telemetry: ``samples`` are counted if it is dropped."""
        return self.outbox.append(
            "telemetry", topic, lambda seq: encode(self._stamp(make(seq))), samples
        )

    @property
    def epoch(self) -> str:
        """The site's stream epoch (from the outbox database)."""
        return self.outbox.epoch

    def _stamp(self, msg: BaseModel) -> BaseModel:
        if isinstance(msg, Envelope) and msg.epoch != self.outbox.epoch:
            return msg.model_copy(update={"epoch": self.outbox.epoch})
        return msg

    def announce(self) -> None:
        """Publish the retained online status and registration (on connect and rebirth)."""
        seq = self.outbox.stats().last_seq
        s = self.settings
        self.bus.publish(
            self.topics.status(s.site_id),
            lifecycle.status(s, self.session, "online", seq, epoch=self.epoch),
            retain=True,
        )
        telemetry = tuple(
            TelemetryDevice(
                device=device,
                source=self._device_sources[src.device],  # type: ignore[arg-type]
                sensors=published_sensors(src.sensors(), cfg.publish),
                publish=cfg.publish,
                summary_window_s=cfg.summary_window_s if cfg.publish == "summary" else None,
            )
            for src, cfg in zip(self.sources, s.devices, strict=True)
            for device in (src.devices() if isinstance(src, SplitSource) else (src.device,))
        )
        payload = lifecycle.registration(
            s, self.session, seq, telemetry, self._tasks(), epoch=self.epoch
        )
        extra = _merged(self._registration_extras)
        if extra:
            reg = Registration.model_validate_json(payload).model_copy(update=extra)
            payload = encode(reg)
        self.bus.publish(self.topics.registration(s.site_id), payload, retain=True)

    def send_heartbeat(self) -> None:
        payload = lifecycle.heartbeat(
            self.settings,
            self.session,
            self.outbox.stats(),
            self._jobs_running(),
            _merged(self._heartbeat_extras),
        )
        self.bus.publish(self.topics.heartbeat(self.site_id), payload, qos=0)

    def request_stop(self) -> None:
        self._stop.set()

    # -- run -----------------------------------------------------------------------------

    def run(self, install_signals: bool = True) -> int:
        """Run until SIGTERM/SIGINT or :meth:`request_stop`; return the exit code (0).

        Pass ``install_signals=False`` when running off the main thread (e.g. in tests).
        """
        if install_signals:
            # SIGBREAK (Windows): Ctrl-Break, which service wrappers may send to stop it.
            for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
                sig = getattr(signal, name, None)
                if sig is not None:
                    signal.signal(sig, lambda _s, _f: self._stop.set())
        s = self.settings
        self.guard = CommandGuard(
            s.commands_path, self._key, s.command_clock_skew_s, prefix=s.mqtt.prefix
        )
        self._load_extensions()
        self.outbox.start()
        self.bus.start()
        if self.tap.history is not None:
            self.tap.history.start()
        for src, cfg in zip(self.sources, s.devices, strict=True):
            if isinstance(src, SplitSource):
                src.route(functools.partial(self._row_emitter, cfg=cfg), self._device_found(src))
            elif self.tap.history is not None:
                self.tap.history.declare(src.device, src.sensors())
            src.start(self._emitter(src.device, cfg), self._row_emitter(src.device, cfg))
        self.heartbeat.start()
        log.info("site %s running with %d device(s)", self.site_id, len(self.sources))
        while not self._stop.is_set():
            due = self.batcher.next_due_in()
            timeout = 0.2 if due is None else min(0.2, max(0.01, due))
            try:
                event = self.inbound.get(timeout=timeout)
            except queue.Empty:
                event = None
            if event is not None:
                self._handle(event)
            self._run_calls()
            self.tap.summaries.poll()
            self.batcher.poll()
        self._shutdown()
        return 0

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:
                log.exception("scheduled call failed")

    def _shutdown(self) -> None:
        log.info("shutting down")
        for fn in self._on_stop:
            try:
                fn()
            except Exception:
                log.exception("stop hook failed")
        self.heartbeat.stop()
        for src in self.sources:
            src.stop()
        if self.tap.history is not None:
            self.tap.history.stop()
            log.info("history: %s", self.tap.history.stats())
        self.tap.summaries.flush_all()
        summaries = self.tap.summaries
        if summaries.windows or summaries.late:
            log.info("summaries: %d window(s) sent, %d late sample(s) left out",
                     summaries.windows, summaries.late)  # fmt: skip
        self.batcher.flush_all()
        self.outbox.stop(flush_s=2.0)
        if self.bus.connected:
            self.bus.wait_idle(2.0)
            seq = self.outbox.stats().last_seq
            payload = lifecycle.status(
                self.settings, self.session, "offline", seq, "shutdown", self.epoch
            )
            self.bus.publish(self.topics.status(self.site_id), payload, retain=True)
            if not self.bus.wait_idle(3.0):
                log.warning("offline status not acknowledged by the broker")
        self.bus.stop()
        if self.guard is not None:
            self.guard.close()
        self.state.mark_stopped()
        log.info("stopped")

    def _load_extensions(self) -> None:
        targets = list(self.settings.extensions)
        if self.settings.training is not None:
            for default in (TRAINING_EXTENSION, DEPLOYMENT_EXTENSION):
                if default not in targets:
                    targets.append(default)
        for target in targets:
            module, _, attr = target.partition(":")
            getattr(importlib.import_module(module), attr)(self)

    def _device_found(self, src: SplitSource) -> Callable[[str], None]:
        """A split source found a new device: re-announce the registration once soon."""

        def found(device: str) -> None:
            if src.historical:
                self._historical.add(device)
            if not self._announce_due.is_set():
                self._announce_due.set()
                self.call_soon(self._reannounce)

        return found

    def _reannounce(self) -> None:
        self._announce_due.clear()
        if self.bus.connected:
            self.announce()

    def _emitter(self, device: str, cfg: DeviceConfig) -> Callable[[Sample], None]:
        return self.tap.emitter(device, cfg.publish, cfg.summary_window_s)

    def _row_emitter(self, device: str, cfg: DeviceConfig) -> Callable[[Sequence[Sample]], None]:
        return self.tap.row_emitter(device, cfg.publish, cfg.summary_window_s)

    def _flush_batch(self, device: str, samples: list[Sample]) -> None:
        site, session = self.site_id, self.session
        historical = device in self._historical
        self.send_samples(
            self.topics.telemetry(site, device),
            lambda seq: TelemetryBatch(
                site=site,
                session=session,
                seq=seq,
                device=device,
                samples=tuple(samples),
                historical=historical,
            ),
            len(samples),
        )

    def _will(self) -> tuple[int, str, bytes]:
        # Runs on the bus thread before each attempt: the Will carries the new session.
        session = self.state.next_session()
        seq = self.outbox.stats().last_seq
        payload = lifecycle.status(
            self.settings, session, "offline", seq, "connection lost", self.epoch
        )
        return session, self.topics.status(self.site_id), payload

    # -- inbound events --------------------------------------------------------------------

    def _handle(self, event: BusEvent) -> None:
        if isinstance(event, Connected):
            self.session = event.session
            self.state.set_connected(True)
            self.bus.subscribe(
                [
                    self.topics.ack(self.site_id),
                    self.topics.site_commands(self.site_id),
                    self.topics.coordinator_status(),
                ]
            )
            self.announce()
            self.outbox.connected()
            for fn in self._on_connected:
                try:
                    fn()
                except Exception:
                    log.exception("on-connected hook failed")
        elif isinstance(event, Disconnected):
            self.state.set_connected(False)
        elif isinstance(event, Inbound):
            self._on_message(event)

    def _on_message(self, event: Inbound) -> None:
        try:
            msg = self.codec.decode(event.topic, event.payload)
        except DecodeError as exc:
            log.warning("rejected message on %s: %s", event.topic, exc)
            return
        if isinstance(msg, Cleared):
            return
        if isinstance(msg, Ack):
            self.outbox.ack(msg.acked, msg.epoch)
        elif isinstance(msg, CoordinatorStatus):
            self._on_coordinator(msg, event.retain)
        elif isinstance(msg, Command):
            self._on_command(msg, event.payload)
        elif msg.kind in ("train_chunk", "deploy_chunk") and msg.kind in self._handlers:
            self._handlers[msg.kind](msg, event.payload)

    def _on_coordinator(self, msg: CoordinatorStatus, retained: bool) -> None:
        before, self._coordinator = self._coordinator, (msg.state, msg.session)
        if msg.state != "online":
            log.info("coordinator is offline")
            return
        # The connect replay already covers the retained "online" seen on (re)subscribe.
        # A live (not retained) online means the coordinator has just (re)connected and may
        # have missed what we sent meanwhile; so does a retained one from a new session.
        if not retained or (before is not None and before != self._coordinator):
            log.info("coordinator online (session %d): replaying unacked rows", msg.session)
            self.outbox.replay()

    def _on_command(self, cmd: Command, raw: bytes) -> None:
        kind = str(getattr(cmd, "kind", ""))
        assert self.guard is not None
        try:
            self.guard.check(cmd)
        except CommandRefused as exc:
            log.warning("refused %s command %s: %s", kind, cmd.cmd_id, exc)
            for kinds, refusal in self._refusals:
                if kinds and kind not in kinds:
                    continue
                try:
                    refusal(cmd, raw, str(exc))
                except Exception:
                    log.exception("refusal handler failed")
            return
        handler = self._handlers.get(kind)
        if handler is None:
            log.warning("no handler for %s command %s", kind, cmd.cmd_id)
            return
        log.info("running %s command %s", kind, cmd.cmd_id)
        try:
            handler(cmd, raw)
        except Exception:
            log.exception("%s command %s failed", kind, cmd.cmd_id)


def _merged(providers: Sequence[Callable[[], dict[str, Any]]]) -> dict[str, Any]:
    """The fields of every provider (a failing one is logged and left out)."""
    out: dict[str, Any] = {}
    for provider in providers:
        try:
            out.update(provider())
        except Exception:
            log.exception("extra fields provider failed")
    return out
