"""Device configuration: the documented TOML examples load, and mistakes read clearly."""

from __future__ import annotations

import sys
import textwrap

import pytest
from pydantic import ValidationError

import site_node.sources as sources
from site_node.sources import (
    FileDeviceConfig,
    SerialDeviceConfig,
    Source,
    SystemDeviceConfig,
    build_source,
    parse_devices,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def doc_example() -> dict:
    assert sources.__doc__ is not None
    return tomllib.loads(textwrap.dedent(sources.__doc__.split("Example devices (TOML)::")[1]))


def test_docstring_examples_parse_and_build() -> None:
    devices = parse_devices(doc_example()["devices"])
    assert [(d.name, d.source) for d in devices] == [
        ("press-1", "serial"),
        ("oven-2", "serial"),
        ("host", "system"),
        ("engine", "file"),
        ("pump-log", "file"),
    ]
    press, oven, host, engine, _pump = devices
    assert isinstance(press, SerialDeviceConfig) and press.parity == "N"
    assert [(s.name, s.unit) for s in press.sensors()] == [("temp", "C"), ("vib", "mm/s")]
    assert [(s.name, s.unit) for s in oven.sensors()] == [("temp", "C"), ("rpm", "rpm")]
    assert isinstance(host, SystemDeviceConfig) and host.interval_s == 10
    assert isinstance(engine, FileDeviceConfig)
    assert len(engine.sensors()) == 23 and engine.sensors()[2].name == "s1"
    for cfg in devices:
        src = build_source(cfg)
        assert isinstance(src, Source)
        assert src.device == cfg.name
        assert src.sensors() == cfg.sensors()
        assert src.stats()["samples"] == 0


def test_all_is_sorted_and_complete() -> None:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions.
    def kind(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert list(sources.__all__) == sorted(sources.__all__, key=kind)
    public = {n for n in vars(sources) if not n.startswith("_")} - {"annotations"}
    modules = {"base", "config", "presets", "parsing", "serial_port", "system", "file_replay"}
    assert public - modules <= set(sources.__all__)


def errors_of(raw: list[dict]) -> str:
    with pytest.raises(ValueError) as info:
        parse_devices(raw)
    return str(info.value)


SERIAL = {"name": "p1", "source": "serial", "port": "/dev/ttyUSB0", "columns": [{"name": "t"}]}
FILE = {"name": "f1", "source": "file", "path": "x.txt", "preset": "cmapss"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x", "source": "modbus"}, "'serial', 'system', 'file'"),
        ({"name": "x"}, "Unable to extract tag using discriminator 'source'"),
        ({**SERIAL, "name": "press.1"}, "String should match pattern"),
        ({**SERIAL, "name": "press 1"}, "String should match pattern"),
        ({**SERIAL, "baudrate": 9600}, "baudrate\n  Extra inputs are not permitted"),
        ({**SERIAL, "columns": []}, 'format = "csv" needs columns'),
        ({**SERIAL, "format": "json"}, "columns apply to format"),
        ({**SERIAL, "stopbits": 3}, "stopbits must be 1, 1.5 or 2"),
        ({**SERIAL, "parity": "weird"}, "parity"),
        ({**SERIAL, "baud": 0}, "greater than 0"),
        ({**SERIAL, "timeout_s": 5}, "less than or equal to 1"),
        ({**SERIAL, "columns": [{"name": "t"}, {"name": "t"}]}, "duplicate column names ['t']"),
        ({**SERIAL, "exclude": ["x"]}, "exclude names unknown columns ['x']"),
        ({**SERIAL, "timestamp_column": "ts"}, "timestamp_column 'ts' is not one of the columns"),
        ({**SERIAL, "reopen_min_s": 5, "reopen_max_s": 1}, "reopen_max_s must be >= reopen_min_s"),
        ({**SERIAL, "columns": [{"name": "has space"}]}, "String should match pattern"),
        ({"name": "h", "source": "system", "metrics": ["cpu"]}, "unknown metrics ['cpu']"),
        ({"name": "h", "source": "system", "interval_s": 0}, "greater than or equal to 0.05"),
        ({**FILE, "include": {"engine": [1]}}, "include names unknown columns ['engine']"),
        ({**FILE, "include": {"unit": {"min": 5, "max": 1}}}, "range max 1.0 is below min 5.0"),
        ({**FILE, "columns": [{"name": "a"}]}, "either preset or columns"),
        ({"name": "f", "source": "file", "path": "x"}, 'preset = "cmapss" or columns'),
        ({**FILE, "rate_hz": 0}, "greater than 0"),
        ({**FILE, "preset": "fd002"}, "Input should be 'cmapss'"),
    ],
)
def test_invalid_device_messages(raw: dict, message: str) -> None:
    text = errors_of([raw])
    assert message in text, text


def test_duplicate_device_names_refused() -> None:
    assert "duplicate device names ['p1']" in errors_of([SERIAL, SERIAL])


def test_parity_words_and_validation_error_type() -> None:
    for word, letter in (("even", "E"), ("Odd", "O"), ("none", "N"), ("s", "S")):
        assert SerialDeviceConfig.model_validate({**SERIAL, "parity": word}).parity == letter
    with pytest.raises(ValidationError):
        parse_devices([{**SERIAL, "parity": "weird"}])


def test_include_list_and_range_forms() -> None:
    cfg = FileDeviceConfig.model_validate(
        {**FILE, "include": {"unit": [1, 2], "cycle": {"min": 10}}}
    )
    assert cfg.include["unit"] == [1.0, 2.0]
    rng = cfg.include["cycle"]
    assert isinstance(rng, sources.RangeFilter)
    assert rng.contains(10) and rng.contains(1e6) and not rng.contains(9.9)


def test_unique_device_names_in_a_settings_model() -> None:
    from pydantic import BaseModel, field_validator

    from site_node.sources import DeviceConfig, unique_device_names

    class Settings(BaseModel):
        devices: list[DeviceConfig] = []

        @field_validator("devices")
        @classmethod
        def _unique(cls, value: list[DeviceConfig]) -> list[DeviceConfig]:
            return unique_device_names(value)

    host = {"name": "host", "source": "system"}
    assert len(Settings.model_validate({"devices": [host, {**host, "name": "h2"}]}).devices) == 2
    with pytest.raises(ValidationError, match=r"duplicate device names \['host'\]"):
        Settings.model_validate({"devices": [host, host]})
