"""What the coordinator sends: acks, signed commands, and its own status."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field

from schemas.envelope import INT63_MAX, Envelope, EpochMs, Id, Level
from schemas.weights import ChunkFields, WeightsBlob

__all__ = [
    "Ack",
    "CancelCommand",
    "Command",
    "CoordinatorStatus",
    "PingCommand",
    "RebirthCommand",
    "TrainChunk",
    "TrainCommand",
    "signing_bytes",
]

HyperValue = float | Annotated[int, Field(ge=-INT63_MAX - 1, le=INT63_MAX)] | str | bool


class Ack(Envelope):
    """Highest contiguous ``seq`` of ``site``'s stream ``epoch`` committed to the
    coordinator's database. A site applies only acks of its own epoch."""

    kind: Literal["ack"] = "ack"
    acked: int = Field(ge=0, le=INT63_MAX)


class Command(Envelope):
    """A signed command with an expiry; ``cmd_id`` is unique, so replays are refused."""

    cmd_id: Id
    expires_at: EpochMs
    signature: str = ""


class TrainCommand(Command):
    kind: Literal["train"] = "train"
    job_id: Id
    run_id: str = Field(max_length=128)
    round: int = Field(ge=0, le=INT63_MAX)
    task: Level
    code_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    strategy: Literal["fedavg", "fedprox"] = "fedavg"
    hyperparams: dict[str, HyperValue] = {}
    weights: WeightsBlob | None = None


class CancelCommand(Command):
    kind: Literal["cancel"] = "cancel"
    job_id: Id
    reason: str = Field(default="", max_length=500)


class RebirthCommand(Command):
    """Ask a site to republish its status and registration."""

    kind: Literal["rebirth"] = "rebirth"


class PingCommand(Command):
    kind: Literal["ping"] = "ping"


class TrainChunk(Envelope, ChunkFields):
    """One chunk of a train command's global weights (on ``cmd/train``).

    Not signed itself: the signed command carries the sha256 of the whole.
    """

    kind: Literal["train_chunk"] = "train_chunk"


class CoordinatorStatus(Envelope):
    """Retained online/offline of the coordinator (also its Last Will)."""

    kind: Literal["coordinator_status"] = "coordinator_status"
    site: str = Field(default="coordinator", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    state: Literal["online", "offline"]


def signing_bytes(cmd: Command | bytes) -> bytes:
    """The canonical bytes a command signature covers: every field but ``signature``.

    Pass the raw payload when verifying, so fields that this minor version does not know
    (and that the model therefore ignores) are still covered by the signature.
    """
    if isinstance(cmd, bytes):
        body = json.loads(cmd)
        body.pop("signature", None)
    else:
        body = cmd.model_dump(mode="json", exclude={"signature"})
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
