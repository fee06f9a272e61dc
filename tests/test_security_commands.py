"""Commands mean exactly what was signed: duplicate keys, the topic in the signature.

A captured signed command must not be re-purposed: rebuilt with duplicated keys (the
verifier's JSON parser and pydantic pick different duplicates), or replayed under another
topic prefix (another plant's namespace on a shared or bridged broker). The end-to-end
tests run a real site daemon against a real Mosquitto; each sends the attack first and a
legitimate command after it on the same connection (MQTT keeps per-connection order), so
the attack has been handled by the time the legitimate one arrives.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from coordinator.admin.signing import sign
from schemas import (
    CancelCommand,
    Codec,
    DecodeError,
    JobStatus,
    PingCommand,
    Sample,
    TelemetryBatch,
    Topics,
    TrainCommand,
    encode,
    now_ms,
    signing_bytes,
)
from site_node.command_guard import CommandGuard, CommandRefused, load_public_key
from site_node.daemon import SiteDaemon
from site_node.settings import SiteSettings
from tests.helpers.broker import Broker
from tests.helpers.mqtt import TestClient, wait_for

SITE = "cmd-site"


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


class Seen:
    """What a daemon's cancel handler ran and what its guard refused."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.refused: list[str] = []
        self.lock = threading.Lock()

    def on_cancel(self, cmd: BaseModel, raw: bytes) -> None:
        with self.lock:
            self.cancelled.append(str(getattr(cmd, "job_id", "")))

    def on_refusal(self, cmd: BaseModel, raw: bytes, reason: str) -> None:
        with self.lock:
            self.refused.append(f"{getattr(cmd, 'job_id', '')}: {reason}")


@pytest.fixture
def site(
    broker: Broker, prefix: str, tmp_path: Path, key: tuple[Ed25519PrivateKey, Path]
) -> Iterator[tuple[SiteDaemon, Seen]]:
    settings = SiteSettings.model_validate(
        {
            "site_id": SITE,
            "data_dir": tmp_path / "data",
            "coordinator_public_key_file": key[1],
            "mqtt": {"port": broker.port, "prefix": prefix},
        }
    )
    d = SiteDaemon(settings)
    seen = Seen()
    d.register_command("cancel", seen.on_cancel)
    d.register_refusal(seen.on_refusal)
    thread = threading.Thread(target=d.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    # Connected is not yet subscribed: the site announces its retained online status after
    # subscribing to its commands on the same connection, so that status means ready.
    status = TestClient(broker.port).connect().subscribe(Topics(prefix).status(SITE))
    status.expect(lambda m: b'"online"' in m.payload, timeout=30)
    status.close()
    yield d, seen
    d.request_stop()
    thread.join(20)
    assert not thread.is_alive()


def _cancel(job_id: str, **kw: Any) -> CancelCommand:
    fields: dict[str, Any] = {
        "site": SITE,
        "session": 1,
        "cmd_id": uuid.uuid4().hex,
        "expires_at": now_ms() + 60_000,
        "job_id": job_id,
    }
    return CancelCommand(**(fields | kw))


def _with_duplicates(payload: bytes, **forged: Any) -> bytes:
    """``payload`` with each ``forged`` key inserted just before the original one.

    ``json.loads`` keeps the last of duplicated keys (the original values); pydantic's
    JSON validator looks each field up forward from the previous field it found, so it
    takes the first one after that: the forged value.
    """
    for k, v in forged.items():
        key = json.dumps(k).encode() + b":"
        assert payload.count(key) == 1, k
        payload = payload.replace(key, key + json.dumps(v).encode() + b"," + key)
    return payload


def _forged_cancel(signed: bytes) -> bytes:
    return _with_duplicates(
        signed, cmd_id=uuid.uuid4().hex, expires_at=now_ms() + 3_600_000, job_id="victim-job"
    )


def test_duplicate_key_cancel_is_refused_by_a_real_site(
    site: tuple[SiteDaemon, Seen],
    broker: Broker,
    prefix: str,
    key: tuple[Ed25519PrivateKey, Path],
) -> None:
    _daemon, seen = site
    topic = Topics(prefix).cmd(SITE, "cancel")
    # A cancel the coordinator really signed (for a job long gone), captured off the wire.
    captured = encode(sign(_cancel("old-job"), key[0], prefix))
    # The parser disagreement the attack relies on: pydantic reads the forged values.
    forged = _forged_cancel(captured)
    assert CancelCommand.model_validate_json(forged).job_id == "victim-job"
    assert json.loads(forged)["job_id"] == "old-job"
    marker = encode(sign(_cancel("marker-job"), key[0], prefix))
    client = TestClient(broker.port).connect()
    try:
        client.publish(topic, forged)
        client.publish(topic, marker)
        wait_for(lambda: "marker-job" in seen.cancelled, 30, "the legitimate cancel ran")
    finally:
        client.close()
    assert seen.cancelled == ["marker-job"]


def test_command_signed_under_another_prefix_is_refused_by_a_real_site(
    site: tuple[SiteDaemon, Seen],
    broker: Broker,
    prefix: str,
    key: tuple[Ed25519PrivateKey, Path],
) -> None:
    """The same coordinator key serves two plants under two prefixes (e.g. bridged): a
    cancel for ``cmd-site`` of the other plant must not cancel this plant's job."""
    _daemon, seen = site
    here = Topics(prefix).cmd(SITE, "cancel")
    other_plant = f"{prefix}/plant-b"
    replayed = encode(sign(_cancel("shared-job"), key[0], other_plant))
    marker = encode(sign(_cancel("marker-job"), key[0], prefix))
    client = TestClient(broker.port).connect()
    try:
        client.publish(here, replayed)
        client.publish(here, marker)
        wait_for(lambda: "marker-job" in seen.cancelled, 30, "the legitimate cancel ran")
    finally:
        client.close()
    assert seen.cancelled == ["marker-job"]
    assert seen.refused == ["shared-job: bad signature"]


# --- the codec: duplicate keys are refused for every kind ------------------------------


def _status() -> JobStatus:
    return JobStatus(site=SITE, session=1, seq=3, job_id="j1", run_id="r1", round=0,
                     state="running", progress=0.5)  # fmt: skip


def _telemetry() -> TelemetryBatch:
    samples = (Sample(ts=1, name="t", value=1.0),)
    return TelemetryBatch(site=SITE, session=1, seq=2, device="d1", samples=samples)


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (Topics().cmd(SITE, "cancel"), _with_duplicates(encode(_cancel("j")), job_id="x")),
        (Topics().job_status(SITE, "j1"), _with_duplicates(encode(_status()), state="done")),
        (Topics().telemetry(SITE, "d1"), _with_duplicates(encode(_telemetry()), seq=1)),
        # Nested: a duplicated hyperparameter.
        (
            Topics().cmd(SITE, "train"),
            encode(
                TrainCommand(
                    site=SITE,
                    session=1,
                    cmd_id="c",
                    expires_at=1,
                    job_id="j",
                    run_id="r",
                    round=0,
                    task="t",
                    code_hash="a" * 64,
                    hyperparams={"lr": 0.1},
                )
            ).replace(b'"lr":0.1', b'"lr":0.1,"lr":100.0'),
        ),
    ],
    ids=["cancel", "job_status", "telemetry", "nested"],
)
def test_codec_refuses_duplicate_keys(topic: str, payload: bytes) -> None:
    with pytest.raises(DecodeError, match="duplicate key"):
        Codec().decode(topic, payload)


def test_codec_accepts_the_same_payload_without_duplicates() -> None:
    msg = Codec().decode(Topics().job_status(SITE, "j1"), encode(_status()))
    assert msg == _status().model_copy(update={"ts": msg.ts})  # type: ignore[union-attr]


# --- the guard verifies the validated model and the topic ------------------------------


@pytest.fixture
def guard(tmp_path: Path, key: tuple[Ed25519PrivateKey, Path]) -> Iterator[CommandGuard]:
    g = CommandGuard(tmp_path / "c.db", load_public_key(key[1]), prefix="plant-a/fedmq/v1")
    yield g
    g.close()


def test_guard_verifies_what_the_model_says_not_the_raw_json(
    guard: CommandGuard, key: tuple[Ed25519PrivateKey, Path]
) -> None:
    """Even past a codec that let duplicates through, the forged values fail."""
    captured = encode(sign(_cancel("old-job"), key[0], "plant-a/fedmq/v1"))
    forged = CancelCommand.model_validate_json(_forged_cancel(captured))
    assert forged.job_id == "victim-job" and forged.signature
    with pytest.raises(CommandRefused, match="bad signature"):
        guard.check(forged)
    guard.check(CancelCommand.model_validate_json(captured))


@pytest.mark.parametrize(
    "where",
    [
        {"prefix": "plant-b/fedmq/v1"},
        {"site": "other-site"},
    ],
)
def test_signature_covers_prefix_and_site(
    guard: CommandGuard, key: tuple[Ed25519PrivateKey, Path], where: dict[str, str]
) -> None:
    prefix = where.get("prefix", "plant-a/fedmq/v1")
    signed = sign(_cancel("j", site=where.get("site", SITE)), key[0], prefix)
    # Re-addressed to this guard's prefix and site: everything else is as signed.
    moved = signed.model_copy(update={"site": SITE})
    with pytest.raises(CommandRefused, match="bad signature"):
        guard.check(moved)


def test_signing_bytes_name_the_command_topic() -> None:
    ping = PingCommand(site=SITE, session=1, cmd_id="c", expires_at=1, ts=5)
    cancel = _cancel("j", cmd_id="c", expires_at=1, ts=5)
    a, b = signing_bytes(ping, "p/v1"), signing_bytes(ping, "q/v1")
    assert a != b
    assert json.loads(a)["topic"] == "p/v1/site/cmd-site/cmd/ping"
    assert json.loads(signing_bytes(cancel, "p/v1"))["topic"] == "p/v1/site/cmd-site/cmd/cancel"
    # The signature field itself is never covered; the version always is.
    signed = ping.model_copy(update={"signature": "AAAA"})
    assert signing_bytes(signed, "p/v1") == a and json.loads(a)["body"]["v"] == ping.v


def test_signing_bytes_do_not_depend_on_when_they_are_computed() -> None:
    """The signer computes them right after building the command, the site much later:
    a default factory (``ts`` = now) must not decide what is covered."""
    cmd = _cancel("j")
    first = signing_bytes(cmd, "p/v1")
    wait_for(lambda: now_ms() > cmd.ts + 1, 1, "the clock to move on")
    assert signing_bytes(cmd, "p/v1") == first
    assert json.loads(first)["body"]["ts"] == cmd.ts
