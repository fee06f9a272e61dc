"""Typed configuration of telemetry devices: one ``[[devices]]`` table each in the site TOML.

``DeviceConfig`` is a union discriminated on ``source`` (``serial``, ``system``, ``file``).
Every device has a ``name`` that becomes one topic level (``.../telemetry/{name}``), so it
uses only ``[A-Za-z0-9_-]``. Unknown keys are refused so a typo is an error, not a default.
"""

from __future__ import annotations

from datetime import timezone, tzinfo
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from schemas import SensorSpec
from site_node.sources.presets import CMAPSS_COLUMNS

__all__ = [
    "DEVICE_ADAPTER",
    "SYSTEM_METRICS",
    "ColumnSpec",
    "DeviceConfig",
    "FileDeviceConfig",
    "RangeFilter",
    "SerialDeviceConfig",
    "SystemDeviceConfig",
    "check_timestamp_format",
    "parse_devices",
    "resolve_timezone",
    "unique_device_names",
]

_strict = ConfigDict(frozen=True, extra="forbid")

DeviceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
SensorName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s\x00-\x1f]+$")]
Unit = Annotated[str, Field(max_length=32)]

# name -> unit of every metric the system source knows.
SYSTEM_METRICS: dict[str, str] = {
    "cpu_percent": "%",
    "mem_percent": "%",
    "swap_percent": "%",
    "disk_percent": "%",
    "load1": "",
    "load5": "",
    "load15": "",
    "net_bytes_sent": "B",
    "net_bytes_recv": "B",
    "disk_read_bytes": "B",
    "disk_write_bytes": "B",
    "process_count": "",
    "uptime_s": "s",
}


class ColumnSpec(BaseModel):
    """One positional column of a CSV/whitespace line: the sensor it carries and its unit."""

    model_config = _strict
    name: SensorName
    unit: Unit = ""


class RangeFilter(BaseModel):
    """An inclusive numeric range, ``{min = 1, max = 25}``; either bound may be left out."""

    model_config = _strict
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> RangeFilter:
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"range max {self.max} is below min {self.min}")
        return self

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


def _check_columns(
    columns: tuple[ColumnSpec, ...], exclude: tuple[str, ...], what: str
) -> tuple[ColumnSpec, ...]:
    names = [c.name for c in columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what}: duplicate column names {dupes}")
    unknown = sorted(set(exclude) - set(names))
    if unknown:
        raise ValueError(f"exclude names unknown columns {unknown}; columns are {names}")
    return columns


class _Device(BaseModel):
    model_config = _strict
    name: DeviceName
    # What leaves the site (site_node/history): every sample (raw), per-sensor
    # min/mean/max/count over summary_window_s (summary), or nothing (none: local history
    # and training only).
    publish: Literal["raw", "summary", "none"] = "raw"
    summary_window_s: float = Field(default=60.0, ge=1.0, le=86_400)


class SerialDeviceConfig(_Device):
    """A serial port (RS-232/485 adapter, USB CDC) sending one reading per line.

    ``format = "csv"`` maps positional ``columns`` to sensors (``delimiter = " "`` splits on
    any whitespace); ``timestamp_column`` names a column holding epoch ``timestamp_unit``
    instead of using the time of receipt. ``format = "json"`` accepts ``{"temp": 21.5}``
    lines (units from ``units``) or ``{"name": .., "value": .., "unit": ..}`` objects.
    """

    source: Literal["serial"] = "serial"
    port: str = Field(min_length=1)
    baud: int = Field(default=9600, gt=0, le=4_000_000)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = 1
    timeout_s: float = Field(default=0.5, gt=0, le=1.0)
    exclusive: bool = True
    format: Literal["csv", "json"] = "csv"
    columns: tuple[ColumnSpec, ...] = ()
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    timestamp_column: str | None = None
    timestamp_unit: Literal["s", "ms"] = "ms"
    units: dict[str, Unit] = {}
    exclude: tuple[str, ...] = ()
    encoding: str = "utf-8"
    max_line_bytes: int = Field(default=4096, ge=16, le=1_048_576)
    reopen_min_s: float = Field(default=0.5, gt=0)
    reopen_max_s: float = Field(default=30.0, gt=0)
    idle_reopen_s: float | None = Field(default=None, gt=0)

    @field_validator("parity", mode="before")
    @classmethod
    def _parity(cls, value: object) -> object:
        # Accept the words OT people write as well as pyserial's letters.
        words = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}
        if isinstance(value, str):
            return words.get(value.lower(), value.upper())
        return value

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, value: float) -> float:
        if value not in (1, 1.5, 2):
            raise ValueError("stopbits must be 1, 1.5 or 2")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SerialDeviceConfig:
        if self.reopen_max_s < self.reopen_min_s:
            raise ValueError("reopen_max_s must be >= reopen_min_s")
        if self.format == "csv":
            if not self.columns:
                raise ValueError('format = "csv" needs columns = [{name = .., unit = ..}, ...]')
            _check_columns(self.columns, self.exclude, "columns")
            names = [c.name for c in self.columns]
            if self.timestamp_column is not None and self.timestamp_column not in names:
                raise ValueError(
                    f"timestamp_column {self.timestamp_column!r} is not one of the columns {names}"
                )
        elif self.columns:
            raise ValueError('columns apply to format = "csv"; for json lines give units = {..}')
        return self

    def sensors(self) -> tuple[SensorSpec, ...]:
        """The sensors this device is configured to report (json: those with a unit given)."""
        if self.format == "json":
            return tuple(
                SensorSpec(name=n, unit=u) for n, u in self.units.items() if n not in self.exclude
            )
        return tuple(
            SensorSpec(name=c.name, unit=c.unit)
            for c in self.columns
            if c.name not in self.exclude and c.name != self.timestamp_column
        )


class SystemDeviceConfig(_Device):
    """Metrics of the host the site runs on (psutil), sampled every ``interval_s``."""

    source: Literal["system"] = "system"
    interval_s: float = Field(default=10.0, ge=0.05, le=86_400)
    disk_path: str = "/"
    metrics: tuple[str, ...] = tuple(SYSTEM_METRICS)

    @field_validator("metrics")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(SYSTEM_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {sorted(SYSTEM_METRICS)}")
        if not value:
            raise ValueError("metrics must name at least one metric")
        return tuple(dict.fromkeys(value))

    def sensors(self) -> tuple[SensorSpec, ...]:
        """One sensor per configured metric."""
        return tuple(SensorSpec(name=m, unit=SYSTEM_METRICS[m]) for m in self.metrics)


class FileDeviceConfig(_Device):
    """Replays a CSV or whitespace-separated file at ``rate_hz`` rows per second.

    ``preset = "cmapss"`` names the 26 C-MAPSS columns (unit, cycle, op_setting_1..3,
    s1..s21) with their units; otherwise ``columns`` name every column in order, or with
    ``header = true`` the columns to read by their header names (others are ignored).
    ``include`` keeps only rows whose column value is in a list or a range; ``exclude``
    names columns not to emit (they are not read at all, so they may hold text).

    ``timestamp_column`` keeps each row's recorded time (``timestamp_format``: ``iso``,
    ``epoch_s``, ``epoch_ms`` or a strftime pattern; a time without an offset is read in
    ``timezone``) instead of the replay time, and the telemetry is flagged historical.
    Pacing stays ``rate_hz`` rows per second: the stored times are the recorded ones
    whatever the replay speed. ``device_column`` splits the file into one device per
    value (``{name}-{value}``, e.g. ``pdm-17``): a value first seen mid-file adds a device
    then (the site re-announces its registration); rows of values beyond ``max_devices``
    are dropped and counted (``device_limit``). The timestamp and device columns are
    never sensors; with ``header = true`` they may be named by the header only.
    """

    source: Literal["file"] = "file"
    path: Path
    format: Literal["whitespace", "csv"] = "whitespace"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    header: bool = False
    preset: Literal["cmapss"] | None = None
    columns: tuple[ColumnSpec, ...] = ()
    exclude: tuple[str, ...] = ()
    include: dict[str, Union[list[float], RangeFilter]] = {}
    rate_hz: float = Field(default=1.0, gt=0, le=100_000)
    loop: bool = False
    timestamp_column: SensorName | None = None
    timestamp_format: str = "iso"
    timezone: str = "UTC"
    device_column: SensorName | None = None
    # 128: the Azure PdM data set's 100 machines fit; the coordinator accepts 256 devices
    # per site by default (site_max_devices).
    max_devices: int = Field(default=128, ge=1, le=256)

    @field_validator("timestamp_format")
    @classmethod
    def _ts_format(cls, value: str) -> str:
        return check_timestamp_format(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        resolve_timezone(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FileDeviceConfig:
        if self.preset is not None and self.columns:
            raise ValueError("give either preset or columns, not both")
        if self.preset is None and not self.columns:
            raise ValueError('name the file\'s columns: preset = "cmapss" or columns = [..]')
        columns = self.resolved_columns()
        _check_columns(columns, self.exclude, "columns")
        names = [c.name for c in columns]
        unknown = sorted(set(self.include) - set(names))
        if unknown:
            raise ValueError(f"include names unknown columns {unknown}; columns are {names}")
        for key in ("timestamp_column", "device_column"):
            col = getattr(self, key)
            if col is not None and col not in names and not self.header:
                raise ValueError(
                    f"{key} {col!r} is not one of the columns {names} (without header = "
                    "true a column is known by its position in columns only)"
                )
        if self.device_column is not None and self.device_column == self.timestamp_column:
            raise ValueError("device_column and timestamp_column must differ")
        if self.timestamp_column is not None and self.loop:
            raise ValueError(
                "loop = true would replay the same recorded times again: drop loop or "
                "timestamp_column"
            )
        if not self.sensors():
            raise ValueError("exclude leaves no column to emit")
        return self

    def resolved_columns(self) -> tuple[ColumnSpec, ...]:
        """The file's columns in order, from the preset or the configured list."""
        if self.preset == "cmapss":
            return tuple(ColumnSpec(name=n, unit=u) for n, u in CMAPSS_COLUMNS)
        return self.columns

    def sensors(self) -> tuple[SensorSpec, ...]:
        """The emitted columns as sensors (never the timestamp or device column)."""
        skip = {*self.exclude, self.timestamp_column, self.device_column}
        return tuple(
            SensorSpec(name=c.name, unit=c.unit)
            for c in self.resolved_columns()
            if c.name not in skip
        )


def check_timestamp_format(fmt: str) -> str:
    """``fmt`` if it is ``iso``, ``epoch_s``, ``epoch_ms`` or a strftime pattern (has a
    ``%``), else ValueError naming the choices."""
    if fmt in ("iso", "epoch_s", "epoch_ms") or "%" in fmt:
        return fmt
    raise ValueError(
        f"timestamp_format {fmt!r}: use iso, epoch_s, epoch_ms or a strftime pattern "
        'such as "%d/%m/%Y %H:%M:%S"'
    )


def resolve_timezone(name: str) -> tzinfo:
    """``UTC`` or an IANA zone name (``Europe/Berlin``) as a tzinfo, else ValueError."""
    if name.upper() in ("UTC", "Z"):
        return timezone.utc
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:  # unknown name, or no tz database (Windows without tzdata)
        raise ValueError(
            f"timezone {name!r} is not UTC nor a known IANA zone (on Windows: pip install tzdata)"
        ) from None


DeviceConfig = Annotated[
    Union[SerialDeviceConfig, SystemDeviceConfig, FileDeviceConfig],
    Field(discriminator="source"),
]

DEVICE_ADAPTER: TypeAdapter[list[DeviceConfig]] = TypeAdapter(list[DeviceConfig])


def unique_device_names(devices: list[DeviceConfig]) -> list[DeviceConfig]:
    """Return ``devices`` if no two share a name (each is one topic level), else ValueError.

    Call it from the settings model's ``@field_validator("devices")`` classmethod.
    """
    names = [d.name for d in devices]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate device names {dupes}: each device is one topic level")
    for d in devices:
        if isinstance(d, FileDeviceConfig) and d.device_column is not None:
            clash = sorted(n for n in names if n.startswith(f"{d.name}-"))
            if clash:
                raise ValueError(
                    f"device {d.name!r} splits into {d.name}-<{d.device_column}> devices, "
                    f"which {clash} could collide with: rename one"
                )
    return devices


def parse_devices(raw: object) -> list[DeviceConfig]:
    """Validate a list of ``[[devices]]`` tables; also rejects duplicate device names."""
    return unique_device_names(DEVICE_ADAPTER.validate_python(raw))
