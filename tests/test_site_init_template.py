"""``fedmq-site init`` writes a template that parses and shows every device option."""

from __future__ import annotations

from typing import Any

import pytest
import tomllib
from pydantic import BaseModel

from site_node.cli.init import render
from site_node.settings import SiteSettings
from site_node.sources import FileDeviceConfig, SerialDeviceConfig, SystemDeviceConfig
from site_node.training.jobs.config import DatasetConfig, TrainingSettings

MARK = "## ---- devices"


def uncommented(text: str) -> str:
    """Every "# key = value" line from the devices section on, uncommented."""
    head, sep, tail = text.partition(MARK)
    assert sep, "the template lost its devices marker"
    lines = []
    for line in tail.splitlines():
        if line.startswith("# "):
            line = line[2:]
        elif line == "#":
            line = ""
        lines.append(line)
    return head + sep + "\n".join(lines) + "\n"


def test_template_as_written_parses_and_runs_only_the_host_device() -> None:
    settings = SiteSettings.model_validate(tomllib.loads(render("plant-7")))
    assert settings.site_id == "plant-7"
    assert [(d.name, d.source) for d in settings.devices] == [("host", "system")]
    assert settings.training is None


def test_every_commented_example_parses_when_uncommented() -> None:
    raw = tomllib.loads(uncommented(render("plant-7")))
    settings = SiteSettings.model_validate(raw)
    assert [(d.name, d.source) for d in settings.devices] == [
        ("host", "system"),
        ("engine", "file"),
        ("pdm", "file"),
        ("press-1", "serial"),
        ("oven-2", "serial"),
    ]
    pdm = settings.devices[2]
    assert isinstance(pdm, FileDeviceConfig)
    assert (pdm.timestamp_column, pdm.device_column) == ("datetime", "machineID")
    assert settings.training is not None and settings.training.allow == ["cmapss-rul"]


def _keys(tables: list[dict[str, Any]]) -> set[str]:
    return {k for t in tables for k in t}


@pytest.mark.parametrize(
    ("source", "model"),
    [("file", FileDeviceConfig), ("serial", SerialDeviceConfig), ("system", SystemDeviceConfig)],
)
def test_every_device_option_is_shown(source: str, model: type[BaseModel]) -> None:
    raw = tomllib.loads(uncommented(render("plant-7")))
    shown = _keys([d for d in raw["devices"] if d["source"] == source])
    missing = sorted(set(model.model_fields) - shown)
    assert not missing, f"fedmq-site init shows no {missing} for {source} devices"


def test_every_training_option_is_shown() -> None:
    raw = tomllib.loads(uncommented(render("plant-7")))["training"]
    assert not sorted(set(TrainingSettings.model_fields) - set(raw))
    assert not sorted(set(DatasetConfig.model_fields) - _keys(raw["datasets"]))


def test_every_history_option_is_shown() -> None:
    from site_node.history.config import HistorySelection, HistorySettings

    raw = tomllib.loads(uncommented(render("plant-7")))
    assert not sorted(set(HistorySettings.model_fields) - set(raw["history"]))
    selections = [d["history"] for d in raw["training"]["datasets"] if "history" in d]
    assert not sorted(set(HistorySelection.model_fields) - _keys(selections))


def test_every_scoring_option_is_shown() -> None:
    from site_node.scoring.config import ScoringSettings

    raw = tomllib.loads(uncommented(render("plant-7")))
    assert not sorted(set(ScoringSettings.model_fields) - set(raw["scoring"]))
    settings = SiteSettings.model_validate(raw)
    assert settings.scoring.rules == ["rul < 30 for 3 windows"]
