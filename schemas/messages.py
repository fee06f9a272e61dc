"""The union of every wire message, discriminated by ``kind``, and where each may travel."""

from __future__ import annotations

from typing import Annotated, Any, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.commands import (
    Ack,
    CancelCommand,
    CoordinatorStatus,
    PingCommand,
    RebirthCommand,
    TrainChunk,
    TrainCommand,
)
from schemas.deployments import DeployChunk, DeployCommand, DeploymentStatus
from schemas.jobs import JobResult, JobStatus, ResultChunk
from schemas.predictions import Alarm, Prediction
from schemas.site_messages import Heartbeat, Registration, SiteStatus
from schemas.telemetry import TelemetryBatch
from schemas.topics import Channel

__all__ = [
    "ALL_MODELS",
    "CHANNEL_KINDS",
    "COMMAND_KINDS",
    "DURABLE_KINDS",
    "KINDS",
    "MESSAGE_ADAPTER",
    "Message",
    "adapter_for",
]

Message = Annotated[
    Union[
        SiteStatus,
        Registration,
        Heartbeat,
        TelemetryBatch,
        Prediction,
        Alarm,
        DeploymentStatus,
        JobStatus,
        JobResult,
        ResultChunk,
        Ack,
        TrainCommand,
        TrainChunk,
        CancelCommand,
        DeployCommand,
        DeployChunk,
        RebirthCommand,
        PingCommand,
        CoordinatorStatus,
    ],
    Field(discriminator="kind"),
]

# Built on first use: a decoder validates against the kinds its topic carries
# (:func:`adapter_for`) and needs the whole union only to say what a refused payload is; a
# site then never compiles it (~3 MB of its resident memory).
MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message, config=ConfigDict(defer_build=True))

ALL_MODELS: tuple[type[BaseModel], ...] = get_args(get_args(Message)[0])

KINDS: dict[str, type] = {m.model_fields["kind"].default: m for m in ALL_MODELS}

# Which kinds may arrive on which channel; for commands, keyed by the command level.
CHANNEL_KINDS: dict[Channel, frozenset[str]] = {
    Channel.STATUS: frozenset({"site_status"}),
    Channel.REGISTRATION: frozenset({"registration"}),
    Channel.HEARTBEAT: frozenset({"heartbeat"}),
    Channel.TELEMETRY: frozenset({"telemetry"}),
    Channel.PREDICTION: frozenset({"prediction"}),
    Channel.ALARM: frozenset({"alarm"}),
    Channel.DEPLOYMENT: frozenset({"deployment"}),
    Channel.JOB_STATUS: frozenset({"job_status"}),
    Channel.JOB_RESULT: frozenset({"job_result", "result_chunk"}),
    Channel.ACK: frozenset({"ack"}),
    Channel.COORDINATOR_STATUS: frozenset({"coordinator_status"}),
}
COMMAND_KINDS: dict[str, frozenset[str]] = {
    "train": frozenset({"train", "train_chunk"}),
    "cancel": frozenset({"cancel"}),
    "deploy": frozenset({"deploy", "deploy_chunk"}),
    "rebirth": frozenset({"rebirth"}),
    "ping": frozenset({"ping"}),
}

# Kept in the site outbox until acked; each consumes a seq.
DURABLE_KINDS = frozenset(
    {"telemetry", "prediction", "deployment", "job_status", "job_result", "result_chunk"}
)


class _ModelAdapter:
    """``validate_json`` of one model class (its own validator, nothing compiled twice)."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.validate_json = model.model_validate_json


_ADAPTERS: dict[frozenset[str], Any] = {}


def adapter_for(kinds: frozenset[str]) -> Any:
    """A validator (``validate_json``) of exactly ``kinds``, built once per set."""
    adapter = _ADAPTERS.get(kinds)
    if adapter is None:
        models = [KINDS[k] for k in sorted(kinds)]
        if len(models) == 1:
            adapter = _ModelAdapter(models[0])
        else:
            union = Annotated[Union[tuple(models)], Field(discriminator="kind")]  # type: ignore[valid-type]
            adapter = TypeAdapter(union)
        _ADAPTERS[kinds] = adapter
    return adapter
