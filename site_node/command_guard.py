"""Accept a command only if it is signed by the pinned coordinator key, fresh, and new.

Checks, in order: the signature (Ed25519, standard base64, over
``schemas.signing_bytes(command, prefix)``: the command's topic under this site's prefix
and the validated command, exactly as it will be acted on) against the pinned public key
(:class:`Ed25519Key`: OpenSSL's libcrypto, else the cryptography package); the expiry
(``expires_at`` epoch ms, with a clock skew allowance); replay (``cmd_id`` seen before,
persisted in SQLite so a restart does not reopen the window). A site without a pinned key
accepts only the harmless ``rebirth`` and ``ping``; ``train`` and ``cancel`` always need a
valid signature. Used by the daemon's command thread only (one thread owns the database).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from schemas import Command, signing_bytes

__all__ = [
    "UNSIGNED_SAFE",
    "CommandGuard",
    "CommandRefused",
    "Ed25519Key",
    "PublicKey",
    "load_public_key",
]

UNSIGNED_SAFE = frozenset({"rebirth", "ping"})

# DER of an Ed25519 SubjectPublicKeyInfo (RFC 8410): this prefix, then the 32-byte key.
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")
_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----([A-Za-z0-9+/=\s]+)-----END PUBLIC KEY-----")
_NID_ED25519 = 1087  # EVP_PKEY_ED25519


class CommandRefused(Exception):
    """The command must not run; ``str(exc)`` is the reason (logged, never executed)."""


class PublicKey(Protocol):
    """What the guard needs of a key: ``verify`` raises ValueError on a bad signature."""

    def verify(self, signature: bytes, data: bytes) -> None: ...


class Ed25519Key:
    """A pinned Ed25519 public key, verified with the OpenSSL libcrypto that the ``ssl``
    module has already loaded (the site imports it for MQTT anyway), else with the
    cryptography package.

    Why not always cryptography: its one native library adds ~6.5 MB to the site's RSS
    (~8 MB with its Python modules) for as long as the site runs, to check a few commands
    an hour; OpenSSL's one-shot ``EVP_DigestVerify`` (1.1.1 and later) does the same check.
    """

    def __init__(self, raw: bytes, backend: str = "auto") -> None:
        self._pkey: int | None = None
        self._fallback: Any = None
        self._lib = _libcrypto() if backend in ("auto", "openssl") else None
        if backend == "openssl" and self._lib is None:
            raise RuntimeError("OpenSSL libcrypto with Ed25519 not available")
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        self.raw = bytes(raw)
        if self._lib is not None:
            self._pkey = self._lib.EVP_PKEY_new_raw_public_key(
                _NID_ED25519, None, self.raw, len(self.raw)
            )
            self._lib.ERR_clear_error()
            if not self._pkey:
                raise ValueError("not a usable Ed25519 public key")
        else:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            self._fallback = Ed25519PublicKey.from_public_bytes(self.raw)

    @property
    def backend(self) -> str:
        return "openssl" if self._lib is not None else "cryptography"

    def verify(self, signature: bytes, data: bytes) -> None:
        """Return if ``signature`` is this key's over ``data``; else raise ValueError."""
        if self._lib is None:
            from cryptography.exceptions import InvalidSignature

            try:
                self._fallback.verify(signature, data)
            except InvalidSignature:
                raise ValueError("bad signature") from None
            return
        lib = self._lib
        ctx = lib.EVP_MD_CTX_new()
        if not ctx:
            raise MemoryError("EVP_MD_CTX_new")
        try:
            ok = lib.EVP_DigestVerifyInit(ctx, None, None, None, self._pkey) == 1 and (
                lib.EVP_DigestVerify(ctx, signature, len(signature), data, len(data)) == 1
            )
        finally:
            lib.EVP_MD_CTX_free(ctx)
            lib.ERR_clear_error()  # leave no error behind for the ssl module to report
        if not ok:
            raise ValueError("bad signature")

    def __del__(self) -> None:
        if self._pkey and self._lib is not None:
            self._lib.EVP_PKEY_free(self._pkey)
            self._pkey = None


_LIB: list[ctypes.CDLL | None] = []


def _libcrypto() -> ctypes.CDLL | None:
    """The libcrypto the ``ssl`` module uses (found in this process's mappings), with the
    Ed25519 one-shot API declared; None where there is none (then: cryptography)."""
    if _LIB:
        return _LIB[0]
    lib = None
    try:
        import ssl  # noqa: F401  (maps libcrypto; the site's MQTT client has it already)

        with open("/proc/self/maps") as fh:
            path = next((ln.split()[-1] for ln in fh if "/libcrypto.so" in ln), None)
        if path is not None:
            lib = ctypes.CDLL(path)
            p, sz, buf = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
            _declare(lib.EVP_PKEY_new_raw_public_key, p, [ctypes.c_int, p, buf, sz])
            _declare(lib.EVP_PKEY_free, None, [p])
            _declare(lib.EVP_MD_CTX_new, p, [])
            _declare(lib.EVP_MD_CTX_free, None, [p])
            _declare(lib.EVP_DigestVerifyInit, ctypes.c_int, [p, p, p, p, p])
            _declare(lib.EVP_DigestVerify, ctypes.c_int, [p, buf, sz, buf, sz])
            _declare(lib.ERR_clear_error, None, [])
    except (OSError, AttributeError, ImportError):
        lib = None  # no /proc, no such library, or an OpenSSL older than 1.1.1
    _LIB.append(lib)
    return lib


def _declare(fn: Any, restype: Any, argtypes: list[Any]) -> None:
    fn.restype = restype
    fn.argtypes = argtypes


def load_public_key(path: Path) -> Ed25519Key:
    """Read a PEM SubjectPublicKeyInfo Ed25519 key; ValueError if it is not one."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read coordinator public key {path}: {exc.strerror}") from None
    m = _PEM.search(text)
    if m is None:
        raise ValueError(f"{path} is not a PEM public key (-----BEGIN PUBLIC KEY-----)")
    try:
        der = base64.b64decode(b"".join(m.group(1).split()), validate=True)
    except binascii.Error:
        raise ValueError(f"{path} is not a PEM public key (bad base64)") from None
    if len(der) != len(_ED25519_SPKI) + 32 or not der.startswith(_ED25519_SPKI):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return Ed25519Key(der[len(_ED25519_SPKI) :])


class CommandGuard:
    """Verifies signature, expiry and replay of inbound commands."""

    def __init__(
        self,
        db_path: Path,
        public_key: PublicKey | None,
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
        assert self._key is not None
        if not cmd.signature:
            raise CommandRefused("unsigned")
        try:
            sig = base64.b64decode(cmd.signature, validate=True)
            self._key.verify(sig, signing_bytes(cmd, self._prefix))
        except (binascii.Error, ValueError):
            raise CommandRefused("bad signature") from None

    def close(self) -> None:
        self._db.close()
