"""The envelope every fedmq payload carries, and the shared field types."""

from __future__ import annotations

import time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from schemas.version import SCHEMA_VERSION

__all__ = [
    "INT63_MAX",
    "MAX_GAPS",
    "DurableEnvelope",
    "Envelope",
    "EpochMs",
    "Id",
    "Level",
    "SeqRange",
    "SiteId",
    "StreamEpoch",
    "now_ms",
]

SiteId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Level = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
Id = Level
EpochMs = Annotated[int, Field(ge=0, le=32_503_680_000_000)]  # until year 3000
# Every integer on the wire fits a signed 64-bit column (SQLite, PostgreSQL bigint): a
# larger one would be accepted by pydantic and then fail in the store.
INT63_MAX = 2**63 - 1
# A site's stream identity: random, created with its state directory (see Envelope).
StreamEpoch = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{0,64}$")]


def now_ms() -> int:
    """The current time as UTC epoch milliseconds (the only timestamp fedmq uses)."""
    return time.time_ns() // 1_000_000


class Envelope(BaseModel):
    """Fields common to every message.

    ``epoch`` names the sender's stream: a random id created with the site's state
    directory, so a wiped or re-imaged site starts a new stream instead of reusing the
    old one's seqs (empty from senders older than schema 1.1). ``session`` is the
    sender's boot counter (+1 per connect), ``seq`` its per-stream sequence number:
    durable messages each consume one, other messages carry the last one allocated.
    ``historical`` is true when replayed from the site's outbox.
    """

    # JSON has no NaN/Infinity: pydantic would encode them as null, which then fails to
    # decode (or decodes as None), so non-finite floats are refused when a message is built.
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    v: str = Field(default=SCHEMA_VERSION, pattern=r"^\d+\.\d+$")
    site: SiteId
    epoch: StreamEpoch = ""
    session: int = Field(ge=0, le=INT63_MAX)
    seq: int = Field(default=0, ge=0, le=INT63_MAX)
    ts: EpochMs = Field(default_factory=now_ms)
    historical: bool = False


MAX_GAPS = 64
"""The most dropped ranges one durable message may announce (a site merges its ranges)."""


class SeqRange(BaseModel):
    """An inclusive range of sequence numbers (``first <= last``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    first: int = Field(ge=1, le=INT63_MAX)
    last: int = Field(ge=1, le=INT63_MAX)

    def model_post_init(self, _context: object) -> None:
        if self.last < self.first:
            raise ValueError("SeqRange.last must be >= first")


class DurableEnvelope(Envelope):
    """A message kept in the site outbox until the coordinator acks its ``seq``.

    ``gaps`` announces ranges the site dropped by its overflow policy and that the
    coordinator will therefore never receive, so its contiguous ack can move past them.
    """

    seq: int = Field(ge=1, le=INT63_MAX)
    gaps: tuple[SeqRange, ...] = Field(default=(), max_length=MAX_GAPS)
