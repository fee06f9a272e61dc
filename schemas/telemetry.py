"""Sensor telemetry: batches of samples per device."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.envelope import DurableEnvelope, EpochMs, Level

__all__ = ["Quality", "Sample", "TelemetryBatch"]

Quality = Literal["good", "uncertain", "bad"]


class Sample(BaseModel):
    """One reading. ``q`` is the OPC-UA style quality of the value."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    ts: EpochMs
    name: str = Field(min_length=1, max_length=128)
    value: float
    unit: str = Field(default="", max_length=32)
    q: Quality = "good"

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        # JSON has no NaN/Infinity; a sensor that cannot read reports q="bad" instead.
        if not math.isfinite(value):
            raise ValueError("value must be finite")
        return value


class TelemetryBatch(DurableEnvelope):
    """Samples from one device, batched by count and time window."""

    kind: Literal["telemetry"] = "telemetry"
    device: Level
    samples: tuple[Sample, ...] = Field(min_length=1, max_length=10_000)
