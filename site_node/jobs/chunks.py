"""Reassembly of a train command's chunked global weights (``TrainChunk`` on ``cmd/train``).

Chunks are not signed: the signed command names the sha256 of the whole, and
:func:`schemas.assemble` keeps only chunks carrying that digest and verifies the result.
Chunks may arrive before or after their command; the buffer is bounded in bytes (the
oldest job's chunks go first) so unsigned chunks cannot exhaust memory.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from schemas import TrainChunk, WeightsBlob, assemble

__all__ = ["ChunkBuffer"]

log = logging.getLogger(__name__)


class ChunkBuffer:
    """Chunks per job id, bounded by ``max_bytes``; one thread uses it."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        # job_id -> {(sha256, index): chunk}, in order of first arrival
        self._jobs: OrderedDict[str, dict[tuple[str, int], TrainChunk]] = OrderedDict()
        self._bytes = 0

    def add(self, chunk: TrainChunk) -> None:
        job = self._jobs.setdefault(chunk.job_id, {})
        key = (chunk.sha256, chunk.index)
        if key in job:
            return  # a QoS 1 duplicate
        job[key] = chunk
        self._bytes += len(chunk.data)
        while self._bytes > self._max and self._jobs:
            old_id, old = self._jobs.popitem(last=False)
            self._bytes -= sum(len(c.data) for c in old.values())
            log.warning("chunk buffer full: dropped %d chunk(s) of job %s", len(old), old_id)

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
        old = self._jobs.pop(job_id, None)
        if old:
            self._bytes -= sum(len(c.data) for c in old.values())
