"""Model weights on the wire: a safe tensor format, inline or in sha256-verified chunks.

fedmq never unpickles from the network. Weights are a numpy ``.npz`` archive read with
``allow_pickle=False``; this module only moves and verifies bytes, so it needs no numpy.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import INT63_MAX, Id

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "ChunkFields",
    "WeightsBlob",
    "assemble",
    "b64decode",
    "b64encode",
    "make_blob",
    "sha256_hex",
]

DEFAULT_CHUNK_BYTES = 256 * 1024


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class WeightsBlob(BaseModel):
    """Weights metadata; ``data`` holds them inline, else ``chunks`` messages follow."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal["npz"] = "npz"
    size: int = Field(ge=0, le=INT63_MAX)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    data: str | None = None
    chunks: int = Field(default=0, ge=0, le=INT63_MAX)

    def inline_bytes(self) -> bytes | None:
        """The inline weights, verified; None when they travel in chunks."""
        if self.data is None:
            return None
        raw = b64decode(self.data)
        _verify(raw, self.size, self.sha256)
        return raw


class ChunkFields(BaseModel):
    """Fields of one chunk of a large weights blob (mixed into chunk messages)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: Id
    index: int = Field(ge=0, le=INT63_MAX)
    total: int = Field(ge=1, le=INT63_MAX)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    data: str


def make_blob(raw: bytes, max_inline: int = DEFAULT_CHUNK_BYTES) -> tuple[WeightsBlob, list[str]]:
    """Describe ``raw``; returns the blob and the base64 chunk payloads (empty if inline)."""
    digest = sha256_hex(raw)
    if len(raw) <= max_inline:
        return WeightsBlob(size=len(raw), sha256=digest, data=b64encode(raw)), []
    parts = [b64encode(raw[i : i + max_inline]) for i in range(0, len(raw), max_inline)]
    return WeightsBlob(size=len(raw), sha256=digest, chunks=len(parts)), parts


def assemble(blob: WeightsBlob, chunks: Iterable[ChunkFields]) -> bytes:
    """Reassemble chunked weights and verify size and sha256; raise ValueError if not."""
    by_index = {c.index: c for c in chunks if c.sha256 == blob.sha256}
    missing = [i for i in range(blob.chunks) if i not in by_index]
    if missing:
        raise ValueError(f"missing chunks {missing[:5]} of {blob.chunks}")
    raw = b"".join(b64decode(by_index[i].data) for i in range(blob.chunks))
    _verify(raw, blob.size, blob.sha256)
    return raw


def _verify(raw: bytes, size: int, digest: str) -> None:
    if len(raw) != size or sha256_hex(raw) != digest:
        raise ValueError("weights failed verification (size or sha256 mismatch)")
