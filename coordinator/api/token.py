"""The control API's bearer token: a random secret in a 0600 file next to the database.

State-changing requests (submit, cancel) always need it; on an address other than
loopback every request does. A client on the same machine reads the same file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["ensure_token", "read_token", "token_path"]


def token_path(db: Path) -> Path:
    """``fedmq.db`` -> ``fedmq.db.token``."""
    return db.with_name(db.name + ".token")


def ensure_token(path: Path) -> str:
    """The token in ``path``; created (0600, never readable by others) if missing."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token:
        os.chmod(path, 0o600)
        return token
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
