"""Benchmark: the file source's cost per row with recorded timestamps and device split.

Run (from the repository root; ~10-30 s)::

    .venv/bin/python tests/bench/bench_file_replay.py --rows 200000

One generated file in the Azure PdM telemetry layout
(``datetime,machineID,volt,rotate,pressure,vibration``, 100 machines, hourly rows) is
replayed to the end at the highest rate (``rate_hz = 100000``) three ways, side by side:

1. ``replay time``: the four numbers by header name, samples stamped with the replay time
   (what the source did before timestamps existed: the baseline);
2. ``+ timestamp``: also ``timestamp_column = "datetime"`` (ISO 8601, kept per sample);
3. ``+ device split``: also ``device_column = "machineID"`` (one device per machine).

Reports rows/s, CPU microseconds per row (the process's CPU time, all threads: less
sensitive to other load than wall time) and the ratio of each to the baseline, and the
load average. Target: the recorded-time and split replay cost at most 2x the baseline's
CPU per row and at most 50 us of CPU per row (20,000 rows/s of one core: a year of 100
machines' hourly rows, 876,000, in under a minute).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from schemas import Sample  # noqa: E402
from site_node.sources import FileDeviceConfig, build_source  # noqa: E402
from site_node.sources.file_replay import FileSource  # noqa: E402

COLUMNS = [
    {"name": "volt", "unit": "V"},
    {"name": "rotate", "unit": "rpm"},
    {"name": "pressure", "unit": "psi"},
    {"name": "vibration", "unit": "mm/s"},
]


def write_file(path: Path, rows: int, machines: int = 100) -> None:
    start = datetime(2015, 1, 1, 6, tzinfo=timezone.utc)
    with path.open("w") as fh:
        fh.write("datetime,machineID,volt,rotate,pressure,vibration\n")
        for i in range(rows):
            when = start + timedelta(hours=i // machines)
            m = i % machines + 1
            fh.write(
                f"{when:%Y-%m-%d %H:%M:%S},{m},{170 + i % 7}.5,{450 + i % 11}.25,100.5,40.125\n"
            )


def run(path: Path, extra: dict[str, Any]) -> tuple[float, float, int]:
    cfg = FileDeviceConfig.model_validate(
        {"name": "pdm", "source": "file", "path": str(path), "format": "csv", "header": True,
         "columns": COLUMNS, "rate_hz": 100_000, **extra}
    )  # fmt: skip
    src = build_source(cfg)
    assert isinstance(src, FileSource)
    count = [0]

    def sink(row: Sequence[Sample]) -> None:
        count[0] += len(row)

    src.route(lambda _device: sink, lambda _device: None)
    cpu0, t0 = time.process_time(), time.perf_counter()
    src.start(lambda _s: None, sink)
    src.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    src.stop()
    rows = src.stats()["rows"]
    assert count[0] == rows * 4, (count[0], rows)
    return wall, cpu, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "PdM_telemetry.csv"
        write_file(path, args.rows)
        variants = [
            ("replay time", {}),
            ("+ timestamp", {"timestamp_column": "datetime"}),
            ("+ device split", {"timestamp_column": "datetime", "device_column": "machineID"}),
        ]
        results = [(name, *run(path, extra)) for name, extra in variants]
    base_rate = results[0][3] / results[0][1]
    base_cpu = results[0][2] / results[0][3]
    print(f"{args.rows} rows, load average {os.getloadavg()[0]:.1f}")
    print(f"{'variant':16} {'rows/s':>10} {'ratio':>6} {'CPU us/row':>11} {'ratio':>6}")
    for name, wall, cpu, rows in results:
        rate, per_row = rows / wall, cpu / rows
        print(
            f"{name:16} {rate:10.0f} {rate / base_rate:6.2f} {per_row * 1e6:11.1f} "
            f"{per_row / base_cpu:6.2f}"
        )


if __name__ == "__main__":
    main()
