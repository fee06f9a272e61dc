"""Signed ``cmd/train`` and ``cmd/cancel`` from the coordinator daemon.

Commands go out through ``fedmq serve``'s own MQTT client (one per process): the round
driver runs inside serve and publishes with its bus and its signing key. Global weights
above ``chunk_bytes`` go as :class:`schemas.TrainChunk` messages after the command, which
carries their size and sha256.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from coordinator.training.events import TrainError
from schemas import CancelCommand, TrainChunk, TrainCommand, encode, make_blob, now_ms
from schemas.weights import DEFAULT_CHUNK_BYTES

__all__ = ["CommandSender", "load_key"]

log = logging.getLogger(__name__)


def load_key(path: Path | None) -> Any:
    """The signing key, or a one-line TrainError saying how to get one."""
    from coordinator.admin.signing import SigningError, load_private_key

    if path is None:
        raise TrainError(
            "no command-signing key: set signing_key_file (or --signing-key); "
            "`fedmq broker init` generates one",
            "usage",
        )
    try:
        return load_private_key(path)
    except SigningError as exc:
        raise TrainError(f"{exc}; `fedmq broker init` generates a key pair", "usage") from None


class CommandSender:
    """Publishes signed commands through the daemon's bus (``coordinator.bus.Bus``)."""

    def __init__(
        self, bus: Any, key: Any, session: int = 0, chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> None:
        self.bus = bus
        self.key = key
        self.session = session
        self.chunk_bytes = chunk_bytes
        self.topics = bus.topics
        self._pending: list[Any] = []

    def start(self, timeout: float = 15.0) -> None:
        """Wait (up to ``timeout`` s) for the daemon's bus to be connected."""
        if not self.bus.connected.wait(timeout):
            s = self.bus.settings
            raise TrainError(
                f"broker unreachable at {s.host}:{s.port} (MQTT {s.protocol})", "broker"
            )

    def stop(self) -> None:
        self.flush()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until the broker acknowledged everything published so far."""
        deadline = time.monotonic() + timeout
        for info in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                info.wait_for_publish(left)
            except (RuntimeError, ValueError) as exc:  # not queued / disconnected
                log.warning("publish not confirmed: %s", exc)
        self._pending = [i for i in self._pending if not i.is_published()]

    def _publish(self, topic: str, payload: bytes) -> None:
        self._pending.append(self.bus.publish(topic, payload, 1, False))

    def _sign(self, cmd: Any) -> Any:
        from coordinator.admin.signing import sign

        return sign(cmd, self.key, self.topics.prefix)

    def train(
        self,
        site: str,
        job_id: str,
        run_id: str,
        round_no: int,
        task: str,
        code_hash: str,
        strategy: str,
        hyperparams: dict[str, Any],
        weights: bytes | None,
        ttl_s: float,
        evaluate_only: bool = False,
    ) -> TrainCommand:
        """Sign and publish one train command and the chunks of its weights.

        ``evaluate_only``: the site scores ``weights`` on its held-out split, no training
        (also passed in the hyperparameters, which reach the job's body at the site).
        """
        if evaluate_only:
            hyperparams = {**hyperparams, "evaluate_only": True}
        blob, parts = (None, []) if weights is None else make_blob(weights, self.chunk_bytes)
        cmd = TrainCommand(
            site=site, session=self.session, cmd_id=uuid.uuid4().hex,
            expires_at=now_ms() + int(ttl_s * 1000), job_id=job_id, run_id=run_id,
            round=round_no, task=task, code_hash=code_hash, strategy=strategy,  # type: ignore[arg-type]
            hyperparams=hyperparams, weights=blob, evaluate_only=evaluate_only,
        )  # fmt: skip
        topic = self.topics.cmd(site, "train")
        self._publish(topic, encode(self._sign(cmd)))
        for i, part in enumerate(parts):
            assert blob is not None
            chunk = TrainChunk(
                site=site, session=self.session, job_id=job_id, index=i, total=len(parts),
                sha256=blob.sha256, data=part,
            )  # fmt: skip
            self._publish(topic, encode(chunk))
        return cmd

    def cancel(self, site: str, job_id: str, reason: str = "") -> None:
        cmd = CancelCommand(
            site=site, session=self.session, cmd_id=uuid.uuid4().hex,
            expires_at=now_ms() + 600_000, job_id=job_id, reason=reason[:500],
        )  # fmt: skip
        self._publish(self.topics.cmd(site, "cancel"), encode(self._sign(cmd)))
