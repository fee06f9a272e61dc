"""The control API's bearer token: a random secret in a 0600 file.

State-changing requests (submit, cancel) always need it; on an address other than
loopback every request does. A client on the same machine reads the same file.

Where the file is (:func:`default_token_path`), unless ``--token-file`` (or
``FEDMQ_API_TOKEN_FILE``) names one: next to a SQLite database (``fedmq.db.token``); for a
PostgreSQL database, which has no file to sit next to, in the user's configuration
directory (``$XDG_CONFIG_HOME/fedmq/api.token``, else ``~/.config/fedmq/api.token``). Serve
and its clients (``fedmq train``, ``fedmq deploy``) resolve it the same way, so on one
machine, as one user, no flag is needed; several serve instances on one PostgreSQL
database share one token when each is given the same file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from coordinator.store.urls import is_postgres_url

__all__ = ["default_token_path", "ensure_token", "read_token", "token_path"]


def token_path(db: Path) -> Path:
    """``fedmq.db`` -> ``fedmq.db.token``."""
    return db.with_name(db.name + ".token")


def default_token_path(db: Path | str) -> Path:
    """The token file for database ``db`` when none is given: ``DB.token`` for a SQLite
    file, the user's ``fedmq/api.token`` (XDG config directory) for a PostgreSQL URL."""
    if is_postgres_url(db):
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "fedmq" / "api.token"
    return token_path(Path(db))


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
