"""Telemetry sources: serial ports, the host itself, and file replay.

Each ``[[devices]]`` table of the site TOML is one ``DeviceConfig`` (discriminated on
``source``); ``build_source(cfg)`` returns a ``Source`` that the daemon starts with an
``emit`` callback receiving ``schemas.Sample`` values (ts epoch ms, name, value, unit, q),
and optionally an ``emit_row`` callback receiving all samples of one reading at once.

Quality: a reading the device reports as missing (``nan``, ``inf``, an empty CSV cell,
JSON ``null``) becomes a sample with ``q = "bad"`` and ``value = 0.0`` (the wire has no NaN),
so a failing sensor is visible; a line that is not a reading at all (wrong column count,
text where a number belongs, broken JSON, undecodable bytes, over ``max_line_bytes``) is
counted as ``malformed``, logged (rate limited) and skipped.

Example devices (TOML)::

    # A PLC or sensor box on a serial port, CSV lines "21.5,3.2".
    [[devices]]
    name = "press-1"
    source = "serial"
    port = "/dev/ttyUSB0"
    baud = 9600
    bytesize = 8
    parity = "none"          # none | even | odd | mark | space (or N/E/O/M/S)
    stopbits = 1
    timeout_s = 0.5
    format = "csv"
    delimiter = ","          # " " splits on any whitespace
    columns = [{name = "temp", unit = "C"}, {name = "vib", unit = "mm/s"}]
    # timestamp_column = "ts"  # a column with the device's epoch time...
    # timestamp_unit = "ms"    # ...in s or ms; else the time of receipt

    # JSON lines: {"temp": 21.5, "rpm": 1480} or {"name": "temp", "value": 21.5, "unit": "C"}
    [[devices]]
    name = "oven-2"
    source = "serial"
    port = "/dev/ttyACM0"
    baud = 115200
    format = "json"
    units = {temp = "C", rpm = "rpm"}

    # The host the site runs on (psutil).
    [[devices]]
    name = "host"
    source = "system"
    interval_s = 10
    disk_path = "/"
    # metrics = ["cpu_percent", "mem_percent", "disk_percent", "load1"]  # default: all

    # Replay of a C-MAPSS FD001 trajectory (the demo's sensor): engines 1-25, 10 rows/s.
    [[devices]]
    name = "engine"
    source = "file"
    path = "/data/cmapss_fd001/train_FD001.txt"
    preset = "cmapss"
    format = "whitespace"
    rate_hz = 10
    loop = true
    include = {unit = {min = 1, max = 25}}      # or {unit = [1, 2, 3]}
    exclude = ["op_setting_1", "op_setting_2", "op_setting_3"]

    # Any CSV file with a header line and own column names.
    [[devices]]
    name = "pump-log"
    source = "file"
    path = "pump.csv"
    format = "csv"
    header = true
    columns = [{name = "flow", unit = "m3/h"}, {name = "pressure", unit = "bar"}]
    rate_hz = 1
"""

from __future__ import annotations

from site_node.sources.base import (
    Backoff,
    Emit,
    EmitRow,
    RateLimitedLog,
    Source,
    SplitSource,
    ThreadedSource,
)
from site_node.sources.config import (
    DEVICE_ADAPTER,
    SYSTEM_METRICS,
    ColumnSpec,
    DeviceConfig,
    FileDeviceConfig,
    RangeFilter,
    SerialDeviceConfig,
    SystemDeviceConfig,
    parse_devices,
    unique_device_names,
)

__all__ = [
    "DEVICE_ADAPTER",
    "SYSTEM_METRICS",
    "Backoff",
    "ColumnSpec",
    "DeviceConfig",
    "Emit",
    "EmitRow",
    "FileDeviceConfig",
    "RangeFilter",
    "RateLimitedLog",
    "SerialDeviceConfig",
    "Source",
    "SplitSource",
    "SystemDeviceConfig",
    "ThreadedSource",
    "build_source",
    "parse_devices",
    "unique_device_names",
]


def build_source(cfg: DeviceConfig) -> Source:
    """The source for one configured device (not started yet)."""
    # Imported here so a site only loads the drivers its devices use.
    if isinstance(cfg, SerialDeviceConfig):
        from site_node.sources.serial_port import SerialSource

        return SerialSource(cfg)
    if isinstance(cfg, SystemDeviceConfig):
        from site_node.sources.system import SystemSource

        return SystemSource(cfg)
    if isinstance(cfg, FileDeviceConfig):
        from site_node.sources.file_replay import FileSource

        return FileSource(cfg)
    raise TypeError(f"unknown device config {type(cfg).__name__}")
