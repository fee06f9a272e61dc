"""CommandGuard: unsigned, forged, expired and replayed commands are refused."""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import Command, PingCommand, RebirthCommand, TrainCommand, signing_bytes
from site_node.command_guard import CommandGuard, CommandRefused, load_public_key

NOW = 1_800_000_000.0


PREFIX = "fedmq/v1"


def sign(cmd: Command, key: Ed25519PrivateKey) -> Command:
    sig = base64.b64encode(key.sign(signing_bytes(cmd, PREFIX))).decode()
    return cmd.model_copy(update={"signature": sig})


def train(expires_ms: int | None = None) -> TrainCommand:
    return TrainCommand(
        site="s",
        session=1,
        cmd_id=uuid.uuid4().hex,
        expires_at=expires_ms or int(NOW * 1000) + 60_000,
        job_id="j1",
        run_id="r1",
        round=0,
        task="rul",
        code_hash="a" * 64,
    )


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def pub_file(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "coordinator.pub"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.fixture
def guard(tmp_path: Path, pub_file: Path) -> CommandGuard:
    return CommandGuard(
        tmp_path / "commands.db", load_public_key(pub_file), clock=lambda: NOW, prefix=PREFIX
    )


def test_valid_signature_accepted(guard: CommandGuard, key: Ed25519PrivateKey) -> None:
    cmd = sign(train(), key)
    guard.check(cmd)


def test_unsigned_refused(guard: CommandGuard) -> None:
    cmd = train()
    with pytest.raises(CommandRefused, match="unsigned"):
        guard.check(cmd)


def test_forged_refused(guard: CommandGuard) -> None:
    other = Ed25519PrivateKey.generate()
    cmd = sign(train(), other)
    with pytest.raises(CommandRefused, match="bad signature"):
        guard.check(cmd)


def test_tampered_payload_refused(guard: CommandGuard, key: Ed25519PrivateKey) -> None:
    cmd = sign(train(), key)
    tampered = cmd.model_copy(update={"round": 9})
    with pytest.raises(CommandRefused, match="bad signature"):
        guard.check(tampered)


def test_garbage_signature_refused(guard: CommandGuard) -> None:
    cmd = train().model_copy(update={"signature": "!!not-base64!!"})
    with pytest.raises(CommandRefused, match="bad signature"):
        guard.check(cmd)


def test_expired_refused_but_small_skew_tolerated(
    guard: CommandGuard, key: Ed25519PrivateKey
) -> None:
    cmd = sign(train(expires_ms=int(NOW * 1000) - 10_000), key)
    guard.check(cmd)  # 10 s late is within the 30 s skew allowance
    cmd = sign(train(expires_ms=int(NOW * 1000) - 120_000), key)
    with pytest.raises(CommandRefused, match="expired"):
        guard.check(cmd)


def test_replay_refused_even_after_restart(
    tmp_path: Path, pub_file: Path, key: Ed25519PrivateKey
) -> None:
    cmd = sign(train(), key)
    first = CommandGuard(
        tmp_path / "c.db", load_public_key(pub_file), clock=lambda: NOW, prefix=PREFIX
    )
    first.check(cmd)
    with pytest.raises(CommandRefused, match="replayed"):
        first.check(cmd)
    first.close()
    again = CommandGuard(
        tmp_path / "c.db", load_public_key(pub_file), clock=lambda: NOW, prefix=PREFIX
    )
    with pytest.raises(CommandRefused, match="replayed"):
        again.check(cmd)


def test_without_pinned_key_only_rebirth_and_ping(tmp_path: Path) -> None:
    guard = CommandGuard(tmp_path / "c.db", None, clock=lambda: NOW, prefix=PREFIX)
    exp = int(NOW * 1000) + 60_000
    for cmd in (
        RebirthCommand(site="s", session=1, cmd_id="a", expires_at=exp),
        PingCommand(site="s", session=1, cmd_id="b", expires_at=exp),
    ):
        guard.check(cmd)
    with pytest.raises(CommandRefused, match="needs a signature"):
        guard.check(train())


def test_pinned_key_requires_signed_rebirth(guard: CommandGuard, key: Ed25519PrivateKey) -> None:
    cmd = RebirthCommand(site="s", session=1, cmd_id="r", expires_at=int(time.time() * 1000))
    with pytest.raises(CommandRefused, match="unsigned"):
        guard.check(cmd)


def test_non_ed25519_key_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "junk.pub"
    path.write_text("not a key")
    with pytest.raises(ValueError):
        load_public_key(path)
