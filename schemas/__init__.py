"""fedmq wire contract: message models, topics, codec and versions (stdlib + pydantic)."""

from __future__ import annotations

from schemas.codec import DEFAULT_MAX_PAYLOAD, Cleared, Codec, decode, encode
from schemas.commands import (
    Ack,
    CancelCommand,
    Command,
    CoordinatorStatus,
    PingCommand,
    RebirthCommand,
    TrainChunk,
    TrainCommand,
    signing_bytes,
)
from schemas.deployments import DeployChunk, DeployCommand, DeploymentStatus
from schemas.envelope import DurableEnvelope, Envelope, SeqRange, now_ms
from schemas.errors import DecodeError, Reason, SchemaError, TopicError
from schemas.jobs import JOB_STATES, JobResult, JobStatus, ResultChunk
from schemas.messages import ALL_MODELS, DURABLE_KINDS, KINDS, MESSAGE_ADAPTER, Message
from schemas.predictions import Alarm, Prediction, PredictionOutput
from schemas.site_messages import (
    DatasetSummary,
    DeviceInfo,
    Heartbeat,
    Location,
    PlantHierarchy,
    Registration,
    SensorSpec,
    SiteStatus,
    TaskOffer,
    TelemetryDevice,
)
from schemas.telemetry import Sample, TelemetryBatch
from schemas.topics import (
    DEFAULT_PREFIX,
    QOS,
    RETAINED,
    Channel,
    ParsedTopic,
    Topics,
    validate_site_id,
)
from schemas.version import MAJOR, MINOR, SCHEMA_VERSION
from schemas.weights import ChunkFields, WeightsBlob, assemble, make_blob, sha256_hex

__all__ = [
    "ALL_MODELS",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_PREFIX",
    "DURABLE_KINDS",
    "JOB_STATES",
    "KINDS",
    "MAJOR",
    "MESSAGE_ADAPTER",
    "MINOR",
    "QOS",
    "RETAINED",
    "SCHEMA_VERSION",
    "Ack",
    "Alarm",
    "CancelCommand",
    "Channel",
    "ChunkFields",
    "Cleared",
    "Codec",
    "Command",
    "CoordinatorStatus",
    "DatasetSummary",
    "DecodeError",
    "DeployChunk",
    "DeployCommand",
    "DeploymentStatus",
    "DeviceInfo",
    "DurableEnvelope",
    "Envelope",
    "Heartbeat",
    "JobResult",
    "JobStatus",
    "Location",
    "Message",
    "ParsedTopic",
    "PingCommand",
    "PlantHierarchy",
    "Prediction",
    "PredictionOutput",
    "Reason",
    "RebirthCommand",
    "Registration",
    "ResultChunk",
    "Sample",
    "SchemaError",
    "SensorSpec",
    "SeqRange",
    "SiteStatus",
    "TaskOffer",
    "TelemetryBatch",
    "TelemetryDevice",
    "TopicError",
    "Topics",
    "TrainChunk",
    "TrainCommand",
    "WeightsBlob",
    "assemble",
    "decode",
    "encode",
    "make_blob",
    "now_ms",
    "sha256_hex",
    "signing_bytes",
    "validate_site_id",
]
