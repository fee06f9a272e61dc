"""Accept a command only if it is signed by the pinned coordinator key, fresh, and new.

Checks, in order: the signature (Ed25519, standard base64, over
``schemas.signing_bytes(command, prefix)``: the command's topic under this site's prefix
and the validated command, exactly as it will be acted on) against the pinned public key; the expiry
(``expires_at`` epoch ms, with a clock skew allowance); replay (``cmd_id`` seen before,
persisted in SQLite so a restart does not reopen the window). A site without a pinned key
accepts only the harmless ``rebirth`` and ``ping``; ``train`` and ``cancel`` always need a
valid signature. Used by the daemon's command thread only (one thread owns the database).
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from schemas import Command, signing_bytes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["UNSIGNED_SAFE", "CommandGuard", "CommandRefused", "load_public_key"]

UNSIGNED_SAFE = frozenset({"rebirth", "ping"})


class CommandRefused(Exception):
    """The command must not run; ``str(exc)`` is the reason (logged, never executed)."""


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM SubjectPublicKeyInfo Ed25519 key; ValueError if it is not one."""
    # Imported only when a key is pinned: cryptography costs ~8 MB of RSS.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read coordinator public key {path}: {exc.strerror}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


class CommandGuard:
    """Verifies signature, expiry and replay of inbound commands."""

    def __init__(
        self,
        db_path: Path,
        public_key: Ed25519PublicKey | None,
        skew_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        *,
        prefix: str,
    ) -> None:
        self._key = public_key
        self._prefix = prefix
        self._skew_ms = int(skew_s * 1000)
        self._clock = clock
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(db_path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (cmd_id TEXT PRIMARY KEY, expires_at INTEGER)"
        )

    def check(self, cmd: Command) -> None:
        """Return if ``cmd`` may run; else raise CommandRefused.

        ``cmd`` is the codec's validated model (the codec refuses duplicate keys, and a
        kind or site that does not match the topic): the signature is checked over it,
        never over the raw payload, so what is verified is what runs.
        """
        now = int(self._clock() * 1000)
        kind = str(getattr(cmd, "kind", ""))
        if self._key is None:
            if kind not in UNSIGNED_SAFE:
                raise CommandRefused(f"{kind} needs a signature and no key is pinned")
        else:
            self._verify(cmd)
        if cmd.expires_at + self._skew_ms < now:
            raise CommandRefused(f"expired {(now - cmd.expires_at) / 1000:.0f} s ago")
        try:
            self._db.execute("INSERT INTO seen VALUES (?, ?)", (cmd.cmd_id, cmd.expires_at))
        except sqlite3.IntegrityError:
            raise CommandRefused(f"replayed cmd_id {cmd.cmd_id}") from None
        # Expired ids can go: their commands are refused by the expiry check anyway.
        self._db.execute("DELETE FROM seen WHERE expires_at < ?", (now - 2 * self._skew_ms,))

    def _verify(self, cmd: Command) -> None:
        from cryptography.exceptions import InvalidSignature

        assert self._key is not None
        if not cmd.signature:
            raise CommandRefused("unsigned")
        try:
            sig = base64.b64decode(cmd.signature, validate=True)
            self._key.verify(sig, signing_bytes(cmd, self._prefix))
        except (InvalidSignature, binascii.Error, ValueError):
            raise CommandRefused("bad signature") from None

    def close(self) -> None:
        self._db.close()
