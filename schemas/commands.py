"""What the coordinator sends: acks, signed commands, and its own status."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Annotated, Literal

from pydantic import Field

from schemas.envelope import INT63_MAX, Envelope, EpochMs, Id, Level
from schemas.topics import Topics
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
    "public_key_id",
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
    # Score ``weights`` (the final global model) on the site's held-out split and return
    # the metrics without training. Signed like every field, so a site that predates it
    # refuses the command (its body differs) instead of training.
    evaluate_only: bool = False


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
    # public_key_id() of the key serve signs commands with ("" when it signs none): lets a
    # site (fedmq-site doctor) see that its pinned key is the coordinator's, before a
    # signed command is refused for it.
    key_id: str = Field(default="", pattern=r"^([0-9a-f]{32})?$")


def public_key_id(pem: bytes) -> str:
    """A short id of a PEM public key: sha256 of its DER body, first 32 hex digits.

    Stdlib only (both ends compute it): the base64 between the PEM armor lines.

    Raises:
        ValueError: not a PEM block.
    """
    lines = pem.decode("ascii", "replace").strip().splitlines()
    if (
        len(lines) < 3
        or not lines[0].startswith("-----BEGIN ")
        or not lines[-1].startswith("-----END ")
    ):
        raise ValueError("not a PEM key")
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a PEM key (bad base64)") from None
    return hashlib.sha256(der).hexdigest()[:32]


def signing_bytes(cmd: Command, prefix: str) -> bytes:
    """The bytes a command's signature covers: where it goes, and exactly what it says.

    Canonical JSON (sorted keys, no spaces) of ``{"body": ..., "topic": ...}``:

    - ``topic`` is the command's topic ``{prefix}/site/{site}/cmd/{kind}``, so a command
      signed for one site, command name or prefix (e.g. another plant's namespace under a
      bridge) does not verify anywhere else.
    - ``body`` is the *validated model* (every field but ``signature``), never the raw
      payload: the signer signs the model it sends and the site verifies the model it
      decoded, i.e. what it will act on. Nothing the model reads differently from a plain
      JSON parser (a duplicated key, an ignored unknown field) can change the meaning of
      a signed command without breaking the signature.

    Exactness over forward compatibility, by choice: a field that this minor version does
    not know is not in the body, so a newer coordinator's command that sets one fails
    verification at an older site (it is refused rather than acted on without it). Top
    level fields at their static default are left out (``v`` and factory defaults such
    as ``ts`` never are), so that adding a defaulted field in a later minor version keeps
    commands that do not use it verifiable both ways.

    Raises:
        TopicError: ``prefix`` or the command's site or kind cannot form a command topic.
    """
    body = cmd.model_dump(mode="json", exclude={"signature"} | _at_static_default(cmd))
    topic = Topics(prefix).cmd(cmd.site, str(getattr(cmd, "kind", "")))
    text = json.dumps(
        {"body": body, "topic": topic}, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return text.encode()


def _at_static_default(cmd: Command) -> set[str]:
    # Not pydantic's exclude_defaults: it calls default factories (``ts`` = now), so
    # signer and verifier could disagree on whether a field is left out.
    out = set()
    for name, info in type(cmd).model_fields.items():
        if name != "v" and info.default_factory is None and getattr(cmd, name) == info.default:
            out.add(name)
    return out
