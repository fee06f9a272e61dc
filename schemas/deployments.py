"""Deploying a trained model to sites: the signed command and the site's durable status.

``cmd/deploy`` carries a :class:`DeployCommand` (signed like every command; the weights
inline or followed by :class:`DeployChunk` messages on the same topic, each chunk's
``job_id`` being the deployment id) and the site answers with durable
:class:`DeploymentStatus` messages on ``P/site/{id}/deployment``. A rollback is an ordinary
deploy of the version that ran before (``rollback`` set, for the record), so the site
needs no second code path to go back.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from schemas.commands import Command
from schemas.envelope import DurableEnvelope, Envelope, EpochMs, Id, Level
from schemas.weights import ChunkFields, WeightsBlob

__all__ = [
    "DEPLOYMENT_STATES",
    "MAX_RULES",
    "DeployChunk",
    "DeployCommand",
    "DeploymentStatus",
    "RuleText",
]

MAX_RULES = 16
"""The most alarm rules one deployment may declare."""

RuleText = Annotated[str, Field(min_length=1, max_length=200)]
"""One alarm rule as written by the operator, e.g. ``rul < 30`` or
``p_fail > 0.8 for 3 windows``; the site parses it (and refuses what it cannot parse)."""

ModelVersion = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]

DEPLOYMENT_STATES = (
    "accepted",
    "pending_approval",
    "active",
    "rejected",
    "failed",
    "replaced",
)


class DeployCommand(Command):
    """Run ``model_version`` of ``task`` at the site and score live telemetry with it.

    ``weights`` is the model's npz (sha256 verified after any chunks arrive);
    ``code_hash`` pins the task code the site must run it with (its allow-list decides);
    ``cadence_s`` is how often each covered device's window is scored; ``rules`` are the
    alarm rules (empty: the site's configured rules, if any); ``devices`` limits scoring
    to these devices (empty: every device the site streams).
    """

    kind: Literal["deploy"] = "deploy"
    deployment_id: Id
    model_version: ModelVersion
    task: Level
    code_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    weights: WeightsBlob
    cadence_s: float = Field(default=10.0, ge=0.1, le=86_400.0, allow_inf_nan=False)
    rules: tuple[RuleText, ...] = Field(default=(), max_length=MAX_RULES)
    devices: tuple[Level, ...] = Field(default=(), max_length=1024)
    rollback: bool = False


class DeployChunk(Envelope, ChunkFields):
    """One chunk of a deploy command's weights (on ``cmd/deploy``); ``job_id`` holds the
    deployment id. Not signed itself: the signed command carries the sha256 of the whole."""

    kind: Literal["deploy_chunk"] = "deploy_chunk"


class DeploymentStatus(DurableEnvelope):
    """Where a deployment stands at a site (durable: stored once, acked).

    States: ``accepted`` (checks passed, weights being assembled), ``pending_approval``
    (manual approval mode: waits for ``fedmq-site approve``), ``active`` (scoring; at most
    one deployment is active at a site), ``rejected`` (policy or refused command, with the
    reason), ``failed`` (weights incomplete or unverifiable, the model does not load),
    ``replaced`` (a later deployment became active). ``previous_version`` is the version
    that was active before this one became active.
    """

    kind: Literal["deployment"] = "deployment"
    deployment_id: Id
    model_version: ModelVersion
    task: Level
    code_hash: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    state: Literal["accepted", "pending_approval", "active", "rejected", "failed", "replaced"]
    reason: str = Field(default="", max_length=500)
    since: EpochMs
    previous_version: str = Field(default="", max_length=128)
    devices: tuple[Level, ...] = Field(default=(), max_length=1024)
    cadence_s: float | None = Field(default=None, ge=0.1, le=86_400.0, allow_inf_nan=False)
    rules: tuple[RuleText, ...] = Field(default=(), max_length=MAX_RULES)
    rollback: bool = False
