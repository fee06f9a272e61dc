"""The daemon API that training builds on: verified command dispatch and durable job messages.

The daemon runs in-process on a thread here (the API is in-process by nature), against a
real Mosquitto and the acker; everything else about the site is tested as a subprocess.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from schemas import JobStatus, Topics, TrainCommand, encode, now_ms, signing_bytes
from site_node.daemon import SiteDaemon
from site_node.settings import SiteSettings
from tests.helpers.acker import Acker
from tests.helpers.broker import Broker
from tests.helpers.mqtt import TestClient
from tests.helpers.wait import wait_for


@pytest.fixture
def key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    private = Ed25519PrivateKey.generate()
    path = tmp_path / "coordinator.pub"
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, path


@pytest.fixture
def daemon(
    broker: Broker, prefix: str, tmp_path: Path, key: tuple[Ed25519PrivateKey, Path]
) -> Iterator[SiteDaemon]:
    settings = SiteSettings.model_validate(
        {
            "site_id": "api-site",
            "data_dir": tmp_path / "data",
            "coordinator_public_key_file": key[1],
            "mqtt": {"port": broker.port, "prefix": prefix},
        }
    )
    d = SiteDaemon(settings)
    thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    wait_for(lambda: d.bus.connected, 30, "daemon connected")
    # The daemon subscribes to its commands, then publishes its retained online status on the
    # same connection: once the status is on the broker, the subscription is in place and a
    # command published now reaches the daemon (connected alone left a window).
    watcher = TestClient(broker.port).connect()
    try:
        watcher.subscribe(Topics(prefix).status("api-site"))
        watcher.expect(lambda m: b'"online"' in m.payload, timeout=30)
    finally:
        watcher.close()
    yield d
    d.request_stop()
    thread.join(20)
    assert not thread.is_alive()


def test_signed_train_dispatched_and_job_status_delivered_durably(
    daemon: SiteDaemon,
    broker: Broker,
    prefix: str,
    tmp_path: Path,
    key: tuple[Ed25519PrivateKey, Path],
) -> None:
    acker = Acker(broker.port, prefix, tmp_path / "acker.db").start()
    t = Topics(prefix)
    got: list[BaseModel] = []
    done = threading.Event()

    def on_train(cmd: BaseModel, raw: bytes) -> None:
        assert isinstance(cmd, TrainCommand)
        got.append(cmd)
        daemon.send_durable(
            "job_status",
            t.job_status(daemon.site_id, cmd.job_id),
            lambda seq: JobStatus.for_command(
                cmd, site=daemon.site_id, session=daemon.session, seq=seq, state="accepted"
            ),
        ).add_done_callback(lambda _f: done.set())

    daemon.register_command("train", on_train)
    refused: list[str] = []
    daemon.register_refusal(lambda _cmd, _raw, reason: refused.append(reason))
    cmd = TrainCommand(
        site="api-site",
        session=1,
        cmd_id=uuid.uuid4().hex,
        expires_at=now_ms() + 60_000,
        job_id="job-1",
        run_id="run-1",
        round=2,
        task="rul",
        code_hash="b" * 64,
    )
    forged = cmd.model_copy(update={"signature": base64.b64encode(b"x" * 64).decode()})
    signed = cmd.model_copy(
        update={"signature": base64.b64encode(key[0].sign(signing_bytes(cmd, prefix))).decode()}
    )
    client = TestClient(broker.port).connect()
    try:
        client.publish(t.cmd("api-site", "train"), encode(forged))
        wait_for(lambda: refused, 30, "the forged command refused")
        assert got == [] and "signature" in refused[0]  # refused before any handler runs
        client.publish(t.cmd("api-site", "train"), encode(signed))
        assert done.wait(30)
        assert len(got) == 1 and len(refused) == 1
        wait_for(lambda: acker.stored("api-site"), 30, "job status at the acker")
        row = acker.stored("api-site")[0]
        assert row.kind == "job_status" and row.seq == 1
        assert row.payload["job_id"] == "job-1" and row.payload["round"] == 2
        wait_for(lambda: daemon.outbox.stats().last_acked == 1, 30, "ack")
        assert daemon.outbox.stats().depth == 0
    finally:
        client.close()
        acker.stop()
