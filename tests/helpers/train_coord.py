"""A test-side coordinator for site training tests: signed commands out, job messages in.

Commands are signed with ``coordinator.admin.signing`` and published with a plain test client;
job statuses, results and result chunks are read back from the acker's store (which acks
them, as the real coordinator does), decoded with the schemas and reassembled.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.admin.signing import load_private_key, sign
from schemas import (
    CancelCommand,
    JobResult,
    JobStatus,
    ResultChunk,
    Topics,
    TrainChunk,
    TrainCommand,
    assemble,
    encode,
    make_blob,
    now_ms,
)
from tests.helpers.acker import Acker
from tests.helpers.mqtt import TestClient, wait_for

__all__ = ["JobView", "TestCoordinator"]


@dataclass(frozen=True)
class JobView:
    """Everything a site sent about one job, in seq order."""

    statuses: list[JobStatus]
    results: list[JobResult]
    chunks: list[ResultChunk]

    @property
    def states(self) -> list[str]:
        return [s.state for s in self.statuses]

    def weights(self) -> bytes:
        """The result's weights, reassembled from chunks when needed and sha256-verified."""
        assert len(self.results) == 1, f"{len(self.results)} results"
        blob = self.results[0].weights
        assert blob is not None
        inline = blob.inline_bytes()
        return inline if inline is not None else assemble(blob, self.chunks)


class TestCoordinator:
    """Signs and publishes train/cancel commands for one site; reads job messages back."""

    __test__ = False

    def __init__(self, client: TestClient, acker: Acker, prefix: str, private_key: Path) -> None:
        self.client = client
        self.acker = acker
        self.topics = Topics(prefix)
        self.key = load_private_key(private_key)

    def train_command(
        self,
        site: str,
        job_id: str,
        code_hash: str,
        task: str = "cmapss-rul",
        weights: bytes | None = None,
        chunk_bytes: int = 256 * 1024,
        expires_in_s: float = 120.0,
        **fields: Any,
    ) -> tuple[TrainCommand, list[TrainChunk]]:
        """An unsigned train command and the chunks of its weights (if they need any)."""
        blob, parts = (None, []) if weights is None else make_blob(weights, chunk_bytes)
        cmd = TrainCommand(
            site=site, session=1, cmd_id=uuid.uuid4().hex,
            expires_at=now_ms() + int(expires_in_s * 1000), job_id=job_id,
            run_id=fields.pop("run_id", "run-1"), round=fields.pop("round", 1), task=task,
            code_hash=code_hash, weights=blob, **fields,
        )  # fmt: skip
        assert blob is None or blob.data is not None or parts
        chunks = [
            TrainChunk(
                site=site,
                session=1,
                job_id=job_id,
                index=i,
                total=len(parts),
                sha256=blob.sha256,
                data=part,
            )
            for i, part in enumerate(parts)
            if blob is not None
        ]
        return cmd, chunks

    def signed(self, cmd: Any) -> Any:
        return sign(cmd, self.key, self.topics.prefix)

    def publish(self, site: str, command: str, payload: bytes) -> None:
        self.client.publish(self.topics.cmd(site, command), payload)

    def train(self, site: str, job_id: str, code_hash: str, **kw: Any) -> bytes:
        """Sign and publish a train command, then its chunks; returns the command's bytes."""
        cmd, chunks = self.train_command(site, job_id, code_hash, **kw)
        raw = encode(self.signed(cmd))
        self.publish(site, "train", raw)
        for chunk in chunks:
            self.publish(site, "train", encode(chunk))
        return raw

    def cancel(self, site: str, job_id: str, reason: str = "") -> None:
        cmd = CancelCommand(
            site=site, session=1, cmd_id=uuid.uuid4().hex, expires_at=now_ms() + 60_000,
            job_id=job_id, reason=reason,
        )  # fmt: skip
        self.publish(site, "cancel", encode(self.signed(cmd)))

    def job(self, site: str, job_id: str) -> JobView:
        statuses, results, chunks = [], [], []
        for row in self.acker.stored(site):
            if row.payload.get("job_id") != job_id:
                continue
            if row.kind == "job_status":
                statuses.append(JobStatus.model_validate(row.payload))
            elif row.kind == "job_result":
                results.append(JobResult.model_validate(row.payload))
            elif row.kind == "result_chunk":
                chunks.append(ResultChunk.model_validate(row.payload))
        return JobView(statuses, results, chunks)

    def wait_state(self, site: str, job_id: str, state: str, timeout: float = 60.0) -> JobView:
        """Wait until the site reported ``state`` for the job; returns what it sent so far."""
        wait_for(lambda: state in self.job(site, job_id).states, timeout, f"{job_id} {state}")
        return self.job(site, job_id)
