"""The ``[scoring]`` table of a site config: defaults for live scoring.

Imports only pydantic (``site_node.settings`` reads it; nothing heavy loads with it).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ScoringSettings"]


class ScoringSettings(BaseModel):
    """Site-side defaults for scoring a deployed model (docs/scoring.md)."""

    model_config = ConfigDict(extra="forbid")

    # Alarm rules used when a deployment declares none (grammar: site_node/scoring/rules.py).
    rules: list[str] = Field(default_factory=list, max_length=16)
    # The most devices whose windows are kept in memory (and scored); readings of further
    # devices are left out (logged once per device).
    max_windows: int = Field(default=1000, ge=1, le=100_000)
    # The scoring process: resident memory limit (killed and restarted past it), nice
    # level, and compute threads (torch / BLAS pools).
    memory_limit_mb: int = Field(default=1024, ge=64, le=1_000_000)
    nice: int = Field(default=10, ge=0, le=19)
    threads: int = Field(default=1, ge=1, le=256)
    # A score request that takes longer than this kills and restarts the scoring process.
    score_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # Loading the task and weights (the first start imports torch: seconds).
    load_timeout_s: float = Field(default=120.0, gt=0, le=3600)

    @field_validator("rules")
    @classmethod
    def _rules(cls, value: list[str]) -> list[str]:
        from site_node.scoring.rules import parse_rules

        parse_rules(value)  # ValueError names the bad rule and the column
        return value
