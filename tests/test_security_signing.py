"""Command signing: key files, signatures that sites verify over the decoded command."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.admin.signing import (
    SigningError,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign,
)
from schemas import Codec, PingCommand, Topics, TrainCommand, encode, signing_bytes


def _cmd(**extra: object) -> TrainCommand:
    base: dict[str, object] = dict(
        site="plant-a",
        session=3,
        cmd_id="c1",
        expires_at=2_000_000_000_000,
        job_id="j1",
        run_id="r1",
        round=0,
        task="fd001",
        code_hash="a" * 64,
    )
    base.update(extra)
    return TrainCommand(**base)  # type: ignore[arg-type]


def test_keypair_files_modes_and_formats(tmp_path: Path) -> None:
    priv, pub = tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub"
    generate_keypair(priv, pub)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    key = load_private_key(priv)
    assert isinstance(key, Ed25519PrivateKey)
    assert load_public_key(pub).public_bytes_raw() == key.public_key().public_bytes_raw()


P = "fedmq/v1"


def test_signature_verifies_over_the_decoded_command(tmp_path: Path) -> None:
    priv, pub = tmp_path / "k", tmp_path / "k.pub"
    generate_keypair(priv, pub)
    cmd = _cmd()
    signed = sign(cmd, load_private_key(priv), P)
    assert cmd.signature == ""  # the original is untouched (frozen model, copy returned)
    assert signed.model_copy(update={"signature": ""}) == cmd
    payload = encode(signed)
    sig = base64.b64decode(json.loads(payload)["signature"], validate=True)
    assert len(sig) == 64
    # What a site does: decode the payload, verify over the model with the pinned key.
    decoded = Codec().decode(Topics(P).cmd("plant-a", "train"), payload)
    assert isinstance(decoded, TrainCommand)
    load_public_key(pub).verify(sig, signing_bytes(decoded, P))


def test_tampered_field_or_other_key_fails(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    generate_keypair(tmp_path / "o", tmp_path / "o.pub")
    signed = sign(_cmd(), load_private_key(tmp_path / "k"), P)
    sig = base64.b64decode(signed.signature)
    tampered = signed.model_copy(update={"round": 7})
    with pytest.raises(InvalidSignature):
        load_public_key(tmp_path / "k.pub").verify(sig, signing_bytes(tampered, P))
    with pytest.raises(InvalidSignature):
        load_public_key(tmp_path / "o.pub").verify(sig, signing_bytes(signed, P))


def test_unknown_fields_are_not_acted_on_and_not_signed(tmp_path: Path) -> None:
    """Exactness over forward compatibility: the signature covers the model a site acts
    on. A field this version does not know is ignored by the codec and not covered."""
    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    signed = sign(_cmd(), load_private_key(tmp_path / "k"), P)
    body = json.loads(encode(signed))
    body["future_field"] = "x"
    decoded = Codec().decode(Topics(P).cmd("plant-a", "train"), json.dumps(body).encode())
    assert isinstance(decoded, TrainCommand) and not hasattr(decoded, "future_field")
    assert signing_bytes(decoded, P) == signing_bytes(signed, P)
    pub = load_public_key(tmp_path / "k.pub")
    pub.verify(base64.b64decode(signed.signature), signing_bytes(decoded, P))


def test_sign_keeps_subclass_type(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    ping = PingCommand(site="s1", session=1, cmd_id="p1", expires_at=1)
    signed = sign(ping, load_private_key(tmp_path / "k"), P)
    assert isinstance(signed, PingCommand) and signed.signature


def test_bad_key_files_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="cannot read private key"):
        load_private_key(tmp_path / "missing")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(SigningError, match="not a PEM"):
        load_private_key(junk)
    with pytest.raises(SigningError, match="not a PEM"):
        load_public_key(junk)
    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    with pytest.raises(SigningError):
        load_public_key(tmp_path / "k")  # a private key where a public one is expected


def test_regenerate_over_wider_mode_file_resets_mode(tmp_path: Path) -> None:
    priv = tmp_path / "k"
    priv.write_text("old")
    priv.chmod(0o644)
    generate_keypair(priv, tmp_path / "k.pub")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
