"""Reassembly of a train command's chunked global weights (``TrainChunk`` on ``cmd/train``).

Chunks are not signed: the signed command names the sha256 of the whole, and
:func:`schemas.assemble` keeps only chunks carrying that digest and verifies the result.
Chunks may arrive before or after their command, so anyone who can publish on
``cmd/train`` can send chunks: the buffer is bounded in what it holds, not only in data
bytes (200,000 empty chunks once grew a site by 300 MB). Each chunk costs its data plus
:data:`CHUNK_OVERHEAD` (what a parsed chunk message holds beyond its data, measured
~1.5 KiB). Per job at most ``max_job_chunks`` chunks and ``max_job_bytes``: further
chunks of that job are dropped. Over ``max_chunks`` or ``max_bytes`` in all, the oldest
job's chunks go.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from schemas import TrainChunk, WeightsBlob, assemble

__all__ = ["CHUNK_OVERHEAD", "ChunkBuffer"]

log = logging.getLogger(__name__)

CHUNK_OVERHEAD = 2048
"""Bytes charged per buffered chunk on top of its data."""


class ChunkBuffer:
    """Chunks per job id, bounded in count and bytes, per job and overall; one thread.

    The default of 4,096 chunks per job carries 1 GiB in the coordinator's 256 KiB
    chunks, or ``max_bytes`` in chunks down to 64 KiB for the default ``max_bytes``.
    ``max_job_bytes`` defaults to ``max_bytes``.
    """

    def __init__(
        self,
        max_bytes: int,
        max_chunks: int = 16_384,
        max_job_chunks: int = 4_096,
        max_job_bytes: int | None = None,
    ) -> None:
        self._max = max_bytes
        self._max_chunks = max_chunks
        self._max_job = min(max_job_bytes or max_bytes, max_bytes)
        self._max_job_chunks = min(max_job_chunks, max_chunks)
        self._count = 0
        # job_id -> {(sha256, index): chunk}, in order of first arrival
        self._jobs: OrderedDict[str, dict[tuple[str, int], TrainChunk]] = OrderedDict()
        self._job_bytes: dict[str, int] = {}
        self._bytes = 0
        self._refusing: set[str] = set()  # jobs whose overflow was logged

    @property
    def held_bytes(self) -> int:
        """What the buffer holds, data plus per-chunk overhead."""
        return self._bytes

    @property
    def chunks(self) -> int:
        return self._count

    def add(self, chunk: TrainChunk) -> None:
        if chunk.index >= chunk.total:
            log.warning("dropped chunk %d of %d of job %s", chunk.index, chunk.total, chunk.job_id)
            return
        job = self._jobs.get(chunk.job_id)
        key = (chunk.sha256, chunk.index)
        if job is not None and key in job:
            return  # a QoS 1 duplicate
        cost = _cost(chunk)
        held = self._job_bytes.get(chunk.job_id, 0)
        if len(job or ()) >= self._max_job_chunks or held + cost > self._max_job:
            if chunk.job_id not in self._refusing:
                self._refusing.add(chunk.job_id)
                log.warning("job %s has too many chunks buffered: dropping more", chunk.job_id)
            return
        if job is None:
            job = self._jobs[chunk.job_id] = {}
        job[key] = chunk
        self._job_bytes[chunk.job_id] = held + cost
        self._bytes += cost
        self._count += 1
        while (self._bytes > self._max or self._count > self._max_chunks) and self._jobs:
            old_id = next(iter(self._jobs))
            dropped = len(self._jobs[old_id])
            self.discard(old_id)
            log.warning("chunk buffer full: dropped %d chunk(s) of job %s", dropped, old_id)

    def try_assemble(self, job_id: str, blob: WeightsBlob) -> bytes | None:
        """The verified weights once every chunk is here; None while some are missing.

        Raises:
            ValueError: all chunks are here but size or sha256 do not match.
        """
        job = self._jobs.get(job_id, {})
        have = {i for (digest, i) in job if digest == blob.sha256}
        if any(i not in have for i in range(blob.chunks)):
            return None
        raw = assemble(blob, job.values())
        self.discard(job_id)
        return raw

    def missing(self, job_id: str, blob: WeightsBlob) -> list[int]:
        job = self._jobs.get(job_id, {})
        have = {i for (digest, i) in job if digest == blob.sha256}
        return [i for i in range(blob.chunks) if i not in have]

    def discard(self, job_id: str) -> None:
        self._count -= len(self._jobs.pop(job_id, {}))
        self._bytes -= self._job_bytes.pop(job_id, 0)
        self._refusing.discard(job_id)


def _cost(chunk: TrainChunk) -> int:
    return len(chunk.data) + CHUNK_OVERHEAD
