"""Mosquitto 2 password files: ``user:$7$101$<b64 salt>$<b64 PBKDF2-SHA512 hash>``.

The same format ``mosquitto_passwd`` writes (12-byte salt, 101 iterations, 64-byte hash),
so a file written here is accepted by a stock Mosquitto 2 broker without that tool.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from pathlib import Path

from coordinator.admin.signing import write_private

__all__ = [
    "ITERATIONS",
    "PasswordFileError",
    "generate_password",
    "hash_password",
    "read_password_file",
    "verify_password",
    "write_password_file",
]

log = logging.getLogger(__name__)

ITERATIONS = 101  # mosquitto_passwd's default for $7$
_SALT_BYTES = 12
_HASH_BYTES = 64


class PasswordFileError(ValueError):
    """A password file line or username is malformed (one line, for the CLI)."""


def generate_password() -> str:
    """A random password with 256 bits of entropy, URL-safe (no quoting needed in TOML)."""
    return secrets.token_urlsafe(32)


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The ``$7$`` hash of ``password`` as Mosquitto 2 stores it (after ``user:``)."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _HASH_BYTES)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(encoded: str, password: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash (constant-time comparison)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7" or not parts[2].isdigit():
        raise PasswordFileError("not a Mosquitto $7$ password hash")
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError as exc:
        raise PasswordFileError("malformed base64 in password hash") from exc
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(expected))
    return hmac.compare_digest(digest, expected)


def _check_username(username: str) -> str:
    if not username or ":" in username or any(c.isspace() for c in username):
        raise PasswordFileError(f"invalid username {username!r}: no ':' or whitespace")
    return username


def read_password_file(path: Path) -> dict[str, str]:
    """Username -> ``$7$`` hash, in file order. A missing file is empty."""
    if not path.exists():
        return {}
    entries: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not encoded.startswith("$"):
            raise PasswordFileError(f"{path}:{number}: not a 'user:$hash' line")
        entries[user] = encoded
    return entries


def write_password_file(path: Path, entries: Mapping[str, str]) -> None:
    """Write username -> hash entries with mode 0600 (hashes are still worth guarding)."""
    lines = [f"{_check_username(user)}:{encoded}\n" for user, encoded in entries.items()]
    write_private(path, "".join(lines).encode())
    log.info("wrote password file %s (%d users)", path, len(lines))
