"""Ed25519 command signing: the coordinator's key pair and signatures on commands.

Sites pin the public key and verify ``Command.signature`` (standard base64) over
``schemas.signing_bytes(command, prefix)``: the command's topic and its validated fields
(see there); this module only signs. Keys are PEM: the private
key PKCS8 unencrypted with file mode 0600, the public key SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from schemas import Command, signing_bytes

__all__ = [
    "SigningError",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "sign",
    "write_private",
]

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Command)


class SigningError(ValueError):
    """A key file is missing, unreadable or not an Ed25519 key (one line, for the CLI)."""


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` created with mode 0600 (never world-readable, even briefly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_CREAT with 0600 so the secret is never on disk with a wider mode; chmod covers
    # an existing file that had one.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def generate_keypair(private_path: Path | str, public_path: Path | str) -> None:
    """Create a new Ed25519 key pair: private key (0600) and public key as PEM files."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_private(Path(private_path), private_pem)
    Path(public_path).parent.mkdir(parents=True, exist_ok=True)
    Path(public_path).write_bytes(public_pem)
    log.info("generated command-signing key pair %s / %s", private_path, public_path)


def _read(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read {what} {path}: {exc.strerror}") from exc


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Load the coordinator's PEM PKCS8 Ed25519 private key.

    Raises:
        SigningError: unreadable, malformed, or not an Ed25519 key.
    """
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"not a PEM private key: {path}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"not an Ed25519 private key: {path}")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Load a PEM SubjectPublicKeyInfo Ed25519 public key.

    Raises:
        SigningError: unreadable, malformed, or not an Ed25519 key.
    """
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"not a PEM public key: {path}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"not an Ed25519 public key: {path}")
    return key


def sign(cmd: C, key: Ed25519PrivateKey, prefix: str) -> C:
    """Return a copy of ``cmd`` whose ``signature`` covers every other field and its
    topic under ``prefix`` (the one it is published on)."""
    signature = key.sign(signing_bytes(cmd, prefix))
    return cmd.model_copy(update={"signature": base64.b64encode(signature).decode("ascii")})
