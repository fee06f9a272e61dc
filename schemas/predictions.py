"""What a site's deployed model says about a device: predictions and alarms.

A :class:`Prediction` is durable (kept in the site outbox until acked, one seq each), like
telemetry: the coordinator stores it exactly once. An :class:`Alarm` is the retained state
of one rule on one device (active or cleared); it is not durable, since the retained
message on the broker is its latest truth, and a site clears it with an empty retained
payload.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import DurableEnvelope, Envelope, EpochMs, Level

__all__ = ["MAX_OUTPUTS", "Alarm", "OutputName", "Prediction", "PredictionOutput"]

MAX_OUTPUTS = 64
"""The most outputs one prediction may carry (e.g. ``rul``, ``p_fail``)."""

OutputName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class PredictionOutput(BaseModel):
    """One output of a model for a window, e.g. ``{"value": 112.0, "unit": "cycles"}``
    (finite: JSON has no NaN or Infinity, and the model refuses them)."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    value: float
    unit: str = Field(default="", max_length=32)


class Prediction(DurableEnvelope):
    """A deployed model's outputs for one device's window of samples ending at
    ``window_end``."""

    kind: Literal["prediction"] = "prediction"
    device: Level
    model_version: str = Field(min_length=1, max_length=128)
    task: Level
    window_end: EpochMs
    outputs: dict[OutputName, PredictionOutput] = Field(min_length=1, max_length=MAX_OUTPUTS)


class Alarm(Envelope):
    """The state of one alarm rule on one device, retained on its device's alarm topic.

    ``alarm_id`` names the rule (e.g. ``rul_low``), ``rule`` says it (``rul < 30``),
    ``value`` is the value that last changed the state and ``since`` when the state began.
    """

    kind: Literal["alarm"] = "alarm"
    device: Level
    alarm_id: Level
    state: Literal["active", "cleared"]
    severity: Literal["info", "warning", "critical"] = "warning"
    rule: str = Field(default="", max_length=200)
    value: float | None = None
    model_version: str = Field(default="", max_length=128)
    since: EpochMs
