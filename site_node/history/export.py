"""A training dataset from the local history: the selected rows as a private CSV file.

When a dataset is declared with ``history = {devices = [...], since_days = N}`` instead
of ``paths``, the site writes the selected history to
``<data_dir>/history-exports/<dataset>.csv`` (folder 0700, file 0600, replaced atomically)
and hands that one path to the task's ``read_table``. The CSV (RFC 4180, UTF-8, one header
line) has one line per reading, oldest first:

``timestamp``
    the reading's time, ISO 8601 UTC with milliseconds (``2026-11-29T16:55:01.123Z``)
``ts_ms``
    the same time as UTC epoch milliseconds
``device``
    the device name
one column per sensor
    named as the device's source names it (first seen first); empty where the reading has no
    value for it, or its value was ``bad`` (quality ``uncertain`` values are kept).
"""

from __future__ import annotations

import csv
import os
import sqlite3
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedmq_runtime.clock import now_ms
from site_node.history.config import HISTORY_FILE, HistorySelection
from site_node.history.store import read_readings

__all__ = [
    "EXPORT_DIR",
    "HISTORY_EXPORT_PARAM",
    "ExportResult",
    "dataset_source",
    "export_history",
    "iso_utc",
]

EXPORT_DIR = "history-exports"
# Load parameter naming the export a history dataset's job reads (taken out before the
# task sees its parameters).
HISTORY_EXPORT_PARAM = "_history_export"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int  # readings written (CSV lines after the header)
    columns: tuple[str, ...]


def iso_utc(ts_ms: int) -> str:
    """``2026-11-29T16:55:01.123Z`` for epoch milliseconds."""
    dt = datetime.fromtimestamp(ts_ms // 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def export_history(
    history_db: Path,
    devices: Sequence[str],
    out: Path,
    since_days: float | None = None,
    now: int | None = None,
) -> ExportResult:
    """Write the history of ``devices`` (samples of the last ``since_days``) to ``out``.

    A history that does not exist yet, or holds nothing selected, gives a CSV with the
    header only. Reads through its own connection: the daemon may be writing.
    """
    since = 0 if since_days is None else (now or now_ms()) - int(since_days * 86_400_000)
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".export-", dir=out.parent)
    conn = None
    names: list[str] = []
    rows = 0
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            if hasattr(os, "fchmod"):  # POSIX; mkstemp's file is private on Windows too
                os.fchmod(fh.fileno(), 0o600)
            if history_db.exists():
                conn = sqlite3.connect(f"file:{history_db}?mode=ro", uri=True, timeout=30)
                marks = ",".join("?" * len(devices))
                query = f"SELECT name FROM series WHERE device IN ({marks}) ORDER BY id"
                names = list(dict.fromkeys(n for (n,) in conn.execute(query, list(devices))))
            column = {n: i for i, n in enumerate(names)}
            writer = csv.writer(fh)
            writer.writerow(["timestamp", "ts_ms", "device", *names])
            for r in read_readings(conn, devices, since) if conn is not None else ():
                cells = [""] * len(names)
                for name, value, q in zip(r.names, r.values, r.quality, strict=True):
                    if q != "bad":
                        cells[column[name]] = repr(value)
                writer.writerow([iso_utc(r.ts), r.ts, r.device, *cells])
                rows += 1
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if conn is not None:
            conn.close()
    return ExportResult(out, rows, ("timestamp", "ts_ms", "device", *names))


def dataset_source(
    name: str,
    paths: Sequence[str],
    history: HistorySelection | None,
    params: Mapping[str, Any],
    data_dir: Path,
) -> tuple[list[str], dict[str, Any]]:
    """The files a dataset's task reads and its load parameters.

    A ``paths`` dataset: as configured. A history dataset: a fresh export of the selected
    history (one CSV, see the module docstring), and ``params`` gain
    :data:`HISTORY_EXPORT_PARAM` = that file, so a job reads the rows exported for it (the
    job body takes the key out before the task sees ``params``).
    """
    if history is None:
        return [str(p) for p in paths], dict(params)
    data_dir = Path(data_dir)
    result = export_history(
        data_dir / HISTORY_FILE,
        history.devices,
        data_dir / EXPORT_DIR / f"{name}.csv",
        history.since_days,
    )
    return [str(result.path)], {**params, HISTORY_EXPORT_PARAM: str(result.path)}
