"""Helpers for coordinator deployment tests: a model in the database, and a fake site
that takes signed deploy commands and answers with durable deployment statuses.

``put_model(db, version, task, code_hash, weights)`` stores a trained model version (and
its run, which names the code hash) the way a finished training run leaves it, so
``fedmq deploy VERSION`` can send it without training first.

:class:`DeploySite` is one site on a paho client in the test process: retained online
status and a registration offering ``offers`` (task name -> code hash; as ``deploy_tasks``,
and as ``tasks`` too unless ``deploy_only``), heartbeats, and
for every ``cmd/deploy`` the site's real checks: the signature, expiry and replay through
``site_node.command_guard.CommandGuard`` (the verifier ``fedmq-site`` runs) with the
coordinator's public key, then the weights assembled from their ``deploy_chunk`` messages
and verified against the command's sha256. What it answers is up to the test::

    site = DeploySite(broker.port, prefix, "a", {"toy": HASH}, tmp / "k.pub", tmp).start()
    got = site.wait_deploy()                    # a verified command and its weights
    site.report(got.cmd, "accepted")
    site.report(got.cmd, "active", previous_version="run-0-r1")
    site.resend()                               # the last status again, same seq
"""

from __future__ import annotations

import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.store.training import TrainDb, now_ms
from schemas import (
    Ack,
    DeployChunk,
    DeployCommand,
    DeploymentStatus,
    Heartbeat,
    Registration,
    SiteStatus,
    TaskOffer,
    Topics,
    assemble,
    encode,
    sha256_hex,
)
from schemas.codec import Codec
from site_node.command_guard import CommandGuard, CommandRefused, load_public_key
from tests.helpers.mqtt import TestClient, wait_for

__all__ = ["DeploySite", "Received", "put_model"]


def put_model(db: Path, version: str, task: str, code_hash: str, weights: bytes) -> None:
    """Store model ``version`` of ``task`` (its run ``run-<version>`` names ``code_hash``)."""
    tdb = TrainDb(db)
    try:
        run_id = f"run-of-{version}"
        tdb.put_run({"run_id": run_id, "task": task, "code_hash": code_hash,
                     "state": "done", "created_at": now_ms()})  # fmt: skip
        tdb.put_model(
            {"model_id": version, "run_id": run_id, "round": 1, "task": task,
             "created_at": now_ms(), "sha256": sha256_hex(weights), "size": len(weights),
             "n_sites": 1, "n_samples": 1, "metrics": {}, "test_rmse": None,
             "weights": weights}
        )  # fmt: skip
    finally:
        tdb.close()


@dataclass(frozen=True)
class Received:
    """A deploy command that passed the site's checks, with its verified weights."""

    cmd: DeployCommand
    weights: bytes
    chunks: int


class DeploySite:
    """A fake site for deployment tests (``start``/``stop``); see the module docstring."""

    def __init__(
        self,
        port: int,
        prefix: str,
        site: str,
        offers: dict[str, str],
        public_key: Path,
        state_dir: Path,
        deploy_only: bool = False,
    ) -> None:
        self.site, self.offers, self.t = site, offers, Topics(prefix)
        self.deploy_only = deploy_only  # offers as deploy_tasks only (a site with no dataset)
        self.codec = Codec(self.t)
        self.epoch = uuid.uuid4().hex[:12]
        self.seq = 0
        self._guard_args = (state_dir / f"{site}-guard.db", load_public_key(public_key), prefix)
        self.client = TestClient(port, client_id=f"deploy-site-{site}-{uuid.uuid4().hex[:6]}")
        self.received: queue.Queue[Received] = queue.Queue()
        self.refused: list[str] = []  # the guard's reasons
        self.last: bytes | None = None
        self.acked = 0  # the coordinator's latest application ack of this stream
        self._pending: dict[str, tuple[DeployCommand, dict[int, DeployChunk]]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # Life ---------------------------------------------------------------------------

    def start(self) -> DeploySite:
        c = self.client
        c.connect()
        c.subscribe(self.t.site_commands(self.site), 1)
        c.subscribe(self.t.ack(self.site), 1)
        c.publish(self.t.status(self.site), self._status("online"), retain=True)
        offers = tuple(TaskOffer(name=n, code_hash=h) for n, h in self.offers.items())
        reg = Registration(
            site=self.site, session=1, epoch=self.epoch, heartbeat_interval_s=1.0,
            tasks=() if self.deploy_only else offers, deploy_tasks=offers,
        )  # fmt: skip
        c.publish(self.t.registration(self.site), encode(reg), retain=True)
        threading.Thread(target=self._work, daemon=True, name=f"site-{self.site}").start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.client.publish(self.t.status(self.site), self._status("offline"), retain=True)
        self.client.close()

    def _status(self, state: str) -> bytes:
        return encode(SiteStatus(site=self.site, session=1, epoch=self.epoch, state=state))  # type: ignore[arg-type]

    def _work(self) -> None:
        db, key, prefix = self._guard_args
        guard = CommandGuard(db, key, prefix=prefix)  # its SQLite belongs to this thread
        try:
            self._loop(guard)
        finally:
            guard.close()

    def _loop(self, guard: CommandGuard) -> None:
        beat = 0
        while not self._stop.is_set():
            try:
                msg = self.client.messages.get(timeout=1.0)
            except queue.Empty:
                beat += 1
                hb = Heartbeat(site=self.site, session=1, epoch=self.epoch, seq=beat,
                               interval_s=1.0)  # fmt: skip
                self.client.publish(self.t.heartbeat(self.site), encode(hb), qos=0)
                continue
            if msg.topic == self.t.ack(self.site):
                ack = Ack.model_validate_json(msg.payload)
                if ack.epoch == self.epoch:
                    self.acked = max(self.acked, ack.acked)
                continue
            try:
                cmd: Any = self.codec.decode(msg.topic, msg.payload)
            except Exception:
                continue
            if isinstance(cmd, DeployCommand):
                try:
                    guard.check(cmd)
                except CommandRefused as exc:
                    self.refused.append(str(exc))
                    continue
                self._pending[cmd.deployment_id] = (cmd, {})
            elif isinstance(cmd, DeployChunk) and cmd.job_id in self._pending:
                self._pending[cmd.job_id][1][cmd.index] = cmd
            else:
                continue
            self._complete()

    def _complete(self) -> None:
        for dep, (cmd, chunks) in list(self._pending.items()):
            inline = cmd.weights.inline_bytes()
            if inline is not None:
                raw = inline
            elif len(chunks) == cmd.weights.chunks:
                raw = assemble(cmd.weights, chunks.values())  # ValueError: sha256 mismatch
            else:
                continue
            del self._pending[dep]
            self.received.put(Received(cmd, raw, len(chunks)))

    # What the test does -------------------------------------------------------------

    def wait_deploy(self, timeout: float = 30.0) -> Received:
        """The next deploy command that passed the checks (weights verified)."""
        return self.received.get(timeout=timeout)

    def report(
        self,
        cmd: DeployCommand,
        state: str,
        reason: str = "",
        since: int | None = None,
        previous_version: str = "",
    ) -> int:
        """Publish a durable DeploymentStatus for ``cmd`` (the next seq); returns the seq."""
        with self._lock:
            self.seq += 1
            msg = DeploymentStatus(
                site=self.site, session=1, epoch=self.epoch, seq=self.seq,
                deployment_id=cmd.deployment_id, model_version=cmd.model_version,
                task=cmd.task, code_hash=cmd.code_hash, state=state,  # type: ignore[arg-type]
                reason=reason, since=now_ms() if since is None else since,
                previous_version=previous_version, devices=cmd.devices,
                cadence_s=cmd.cadence_s, rules=cmd.rules, rollback=cmd.rollback,
            )  # fmt: skip
            self.last = encode(msg)
            self.client.publish(self.t.deployment(self.site), self.last)
            return self.seq

    def resend(self) -> None:
        """The last status again, byte for byte (a resend after a lost ack)."""
        assert self.last is not None
        self.client.publish(self.t.deployment(self.site), self.last)

    def wait_acked(self, seq: int, timeout: float = 30.0) -> None:
        """Until the coordinator's application ack covers ``seq``."""
        wait_for(lambda: self.acked >= seq, timeout, f"ack of seq {seq} from the coordinator")
