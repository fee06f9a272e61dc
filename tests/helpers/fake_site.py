"""A minimal site in its own process, for coordinator tests before/besides the real daemon.

Publishes real schema messages: retained status (and offline Last Will), retained
registration, heartbeats, and a telemetry stream from an in-memory outbox that is deleted
only by the coordinator's application ack, re-sent after an ack timeout and replayed when
the coordinator's retained status turns online. Every produced sample is appended to
``--produced`` (JSON lines) before it is first published; ``--state`` gets a JSON summary.

    python -m tests.helpers.fake_site --port 1883 --prefix fedmq/v1 --site s1 --messages 100
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from schemas import (
    Heartbeat,
    Registration,
    Sample,
    SiteStatus,
    TaskOffer,
    TelemetryBatch,
    Topics,
    encode,
    now_ms,
)
from schemas.codec import Codec


def sample_values(seq: int, k: int, base_ts: int) -> list[tuple[str, int, float]]:
    """The deterministic samples of message ``seq``: (name, ts, value)."""
    return [(f"s{i}", base_ts + seq, float(seq * 10 + i)) for i in range(k)]


class FakeSite:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.t = Topics(a.prefix)
        self.codec = Codec(self.t)
        self.lock = threading.Lock()
        self.state_lock = threading.Lock()  # serialises _write_state
        self.outbox: dict[int, tuple[bytes, float]] = {}
        self.last_acked = 0
        self.produced = 0
        self.stop = threading.Event()
        self.coord_session: int | None = None
        self.registered = not a.no_register
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"site-{a.site}")
        self.c.max_inflight_messages_set(1000)
        self.c.will_set(self.t.status(a.site), self._status("offline"), 1, True)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message

    def _status(self, state: str) -> bytes:
        return encode(SiteStatus(site=self.a.site, session=self.a.session, state=state))  # type: ignore[arg-type]

    def _announce(self) -> None:
        a = self.a
        self.c.publish(self.t.status(a.site), self._status("online"), 1, True)
        if self.registered:
            reg = Registration(
                site=a.site,
                session=a.session,
                name=f"Site {a.site}",
                heartbeat_interval_s=a.interval,
                tasks=(TaskOffer(name="rul", code_hash="a" * 64),),
            )
            self.c.publish(self.t.registration(a.site), encode(reg), 1, True)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        for topic in (self.t.ack(self.a.site), self.t.site_commands(self.a.site)):
            client.subscribe(topic, 1)
        client.subscribe(self.t.coordinator_status(), 1)
        self._announce()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            m: Any = self.codec.decode(msg.topic, msg.payload)
        except Exception:
            return
        if m.kind == "ack":
            with self.lock:
                self.last_acked = max(self.last_acked, m.acked)
                for seq in [s for s in self.outbox if s <= m.acked]:
                    del self.outbox[seq]
        elif m.kind == "rebirth":
            self.registered = True
            self._announce()
        elif (
            m.kind == "coordinator_status"
            and m.state == "online"
            and m.session != self.coord_session
        ):
            self.coord_session = m.session
            self._replay(0.0)

    def _replay(self, older_than: float, limit: int | None = None) -> None:
        now = time.monotonic()
        with self.lock:
            due = sorted(s for s, (_, sent) in self.outbox.items() if now - sent >= older_than)
            # Throttled like a real outbox: re-sending everything every tick would flood a
            # slow coordinator's broker queue and make the holes it is meant to fill.
            due = due[:limit]
            rows = [(s, self.outbox[s][0]) for s in due]
            for s, payload in rows:
                self.outbox[s] = (payload, now)
        for s, payload in rows:
            # Replays carry historical=true, as the real outbox does.
            msg = self.codec.decode(self.t.telemetry(self.a.site, "dev"), payload)
            again = encode(msg.model_copy(update={"historical": True}))  # type: ignore[union-attr]
            self.c.publish(self.t.telemetry(self.a.site, "dev"), again, 1)
            del s

    def _heartbeats(self) -> None:
        while not self.stop.wait(self.a.interval):
            with self.lock:
                depth, acked = len(self.outbox), self.last_acked
            hb = Heartbeat(
                site=self.a.site,
                session=self.a.session,
                seq=self.produced,
                interval_s=self.a.interval,
                outbox_depth=depth,
                last_acked=acked,
            )
            self.c.publish(self.t.heartbeat(self.a.site), encode(hb), 0)
            self._replay(self.a.ack_timeout, limit=200)
            self._write_state()

    def _write_state(self) -> None:
        """Replace the state file atomically; called by the heartbeat and stream threads.

        One writer at a time (so a later snapshot is never overwritten by an earlier one),
        each through a temp name of its own (so no writer renames another's file away).
        """
        if not self.a.state:
            return
        with self.state_lock:
            with self.lock:
                state = {
                    "produced": self.produced,
                    "acked": self.last_acked,
                    "depth": len(self.outbox),
                }
            tmp = Path(f"{self.a.state}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(self.a.state)

    def _stream(self) -> None:
        a = self.a
        out = open(a.produced, "a") if a.produced else None  # noqa: SIM115
        topic = self.t.telemetry(a.site, "dev")
        base_ts = now_ms()  # recent: older samples would fall to the retention purge
        for seq in range(1, a.messages + 1):
            if self.stop.is_set():
                break
            while len(self.outbox) >= a.window and not self.stop.is_set():
                time.sleep(0.005)  # bounded outbox: wait for acks, as a real site would
            values = sample_values(seq, a.samples, base_ts)
            batch = TelemetryBatch(
                site=a.site,
                session=a.session,
                seq=seq,
                device="dev",
                samples=tuple(Sample(ts=ts, name=n, value=v) for n, ts, v in values),
            )
            payload = encode(batch)
            if out is not None:
                out.write(json.dumps([seq, values]) + "\n")
            with self.lock:
                self.outbox[seq] = (payload, time.monotonic())
                self.produced = seq
            self.c.publish(topic, payload, 1)
        if out is not None:
            out.close()
        self._write_state()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        self.c.connect(self.a.host, self.a.port, keepalive=self.a.keepalive)
        self.c.loop_start()
        threading.Thread(target=self._heartbeats, daemon=True).start()
        if self.a.messages:
            self._stream()
        self.stop.wait()
        info = self.c.publish(self.t.status(self.a.site), self._status("offline"), 1, True)
        info.wait_for_publish(timeout=5)
        self.c.disconnect()
        self.c.loop_stop()


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m tests.helpers.fake_site``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--session", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--keepalive", type=int, default=2)
    p.add_argument("--messages", type=int, default=0)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--window", type=int, default=5000)
    p.add_argument("--ack-timeout", type=float, default=5.0)
    p.add_argument("--produced", type=Path)
    p.add_argument("--state", type=Path)
    p.add_argument("--no-register", action="store_true")
    return p


def main() -> None:
    FakeSite(parser().parse_args()).run()


if __name__ == "__main__":
    main()
