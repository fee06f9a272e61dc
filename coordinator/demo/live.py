"""The demo's last act: the final model put to work at every site on FD001 *test* engines.

After the last round the demo deploys the run's final model to every site through serve's
control API (what ``fedmq deploy`` does), covering only the site's test devices, with the
rule ``rul < 30``. Once a site reports the deployment ``active``, the demo writes the
site's ``test_replay.txt``: the last rows of a few FD001 test engines, interleaved so they
age side by side. The site's file source (``device_column = "unit"``: one device
``test-<unit>`` per engine) has been retrying to open that file since the site started,
so the replay begins only once the model scores. The site keeps a rolling window per
engine, scores it every cadence, publishes predictions (durable) and alarms (retained);
serve stores both. The demo reads them back from the database and sets each prediction
against the truth: the true remaining useful life at a window's end is ``RUL_FD001`` of
the engine plus the engine's cycles left after that row in the test file (the row's
``cycle`` is in the stored telemetry at the window's end time).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.demo.sites import TEST_DEVICE, SiteSpec, site_data_file

__all__ = [
    "RULE",
    "RUL_CAP",
    "WINDOW",
    "Point",
    "TestEngine",
    "choose_engines",
    "collect",
    "deploy_final_model",
    "load_test_engines",
    "write_replay",
]

RULE = "rul < 30"
THRESHOLD = 30.0
WINDOW = 30  # cmapss-rul's window: a device is scored once it has this many rows
RUL_CAP = 125  # the piecewise-linear target cmapss-rul is trained on


@dataclass(frozen=True)
class TestEngine:
    """One FD001 test engine as the demo replays it: its last ``len(lines)`` rows."""

    __test__ = False  # not a pytest class, whatever its name

    unit: int
    length: int  # cycles of the engine in test_FD001.txt
    rul_end: int  # RUL_FD001: cycles left after its last test row
    lines: tuple[str, ...]

    @property
    def device(self) -> str:
        return f"{TEST_DEVICE}-{self.unit}"

    def true_rul(self, cycle: int) -> int:
        return self.rul_end + self.length - cycle


@dataclass(frozen=True)
class Point:
    """One stored prediction of one engine against the truth."""

    cycle: int
    true_rul: int
    predicted: float
    window_end: int


def load_test_engines(
    test_file: Path | None = None, rul_file: Path | None = None
) -> dict[int, tuple[list[str], int]]:
    """``{unit: (its lines in test_FD001.txt, RUL_FD001 of it)}``."""
    test_file = test_file or site_data_file("test_FD001.txt")
    rul_file = rul_file or site_data_file("RUL_FD001.txt")
    ruls = [int(float(x)) for x in rul_file.read_text().split()]
    lines: dict[int, list[str]] = {}
    for line in test_file.read_text().splitlines():
        fields = line.split()
        if fields:
            lines.setdefault(int(float(fields[0])), []).append(line.strip())
    return {u: (rows, ruls[u - 1]) for u, rows in lines.items() if 0 < u <= len(ruls)}


def choose_engines(
    share: Sequence[int], data: dict[int, tuple[list[str], int]], count: int, rows: int
) -> list[TestEngine]:
    """Up to ``count`` test engines of ``share``: those nearest failure at their last test
    row (the lowest RUL_FD001) among those with ``rows`` rows to replay, then the longest;
    each replays its last ``rows`` rows (all of them when it has fewer)."""
    units = [u for u in share if u in data and len(data[u][0]) >= WINDOW]
    units.sort(key=lambda u: (len(data[u][0]) < rows, data[u][1], -len(data[u][0])))
    out = []
    for u in sorted(units[:count]):
        lines, rul = data[u]
        out.append(TestEngine(u, len(lines), rul, tuple(lines[-rows:])))
    return out


def write_replay(path: Path, engines: Sequence[TestEngine]) -> int:
    """Write the engines' rows interleaved (one row of each in turn), atomically: the
    site's file source sees no file, then the whole one. Returns the rows written."""
    longest = max((len(e.lines) for e in engines), default=0)
    rows = [e.lines[i] for i in range(longest) for e in engines if i < len(e.lines)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(rows) + "\n")
    os.replace(tmp, path)
    return len(rows)


def deploy_final_model(
    db: Path,
    model_id: str,
    devices: dict[str, list[str]],
    cadence_s: float,
    wait_s: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deploy ``model_id`` to each site of ``devices`` (its test devices only) and follow
    the sites until each is final or ``wait_s`` ends: (sites sent or skipped, final rows).

    Raises:
        coordinator.api.client.ApiError: serve refused or could not be reached.
    """
    from coordinator.api.client import ApiClient
    from coordinator.api.token import read_token, token_path
    from coordinator.cli.deploy import _follow
    from coordinator.cli.train import _api_url

    client = ApiClient(_api_url(db), read_token(token_path(db)))
    outcomes: list[dict[str, Any]] = []
    for site, names in devices.items():
        body = {"model": model_id, "sites": [site], "rules": [RULE], "cadence_s": cadence_s,
                "devices": names, "expires_s": 600.0, "requested_by": "fedmq demo"}  # fmt: skip
        outcomes.extend(client.deploy(body)["sites"])
    final = _follow(client, outcomes, wait_s, as_json=True) if wait_s else []
    return outcomes, final


def _reader(db: Path) -> Any:
    from coordinator.store.read import SqliteReader

    return SqliteReader.open(db)


def collect(db: Path, site: str, engines: Sequence[TestEngine]) -> dict[str, list[Point]]:
    """Each engine's stored predictions set against the truth, oldest first."""
    reader = _reader(db)
    try:
        out: dict[str, list[Point]] = {}
        for e in engines:
            cycles = {
                int(r["ts"]): int(r["value"])
                for r in reader.telemetry(site, e.device, "cycle", limit=100_000)
            }
            points = []
            for p in reader.predictions(site, e.device, limit=100_000):
                cycle = cycles.get(int(p["window_end"]))
                rul = p["outputs"].get("rul")
                if cycle is None or rul is None:
                    continue  # its telemetry row is not stored yet
                points.append(Point(cycle, e.true_rul(cycle), float(rul["value"]),
                                    int(p["window_end"])))  # fmt: skip
            out[e.device] = sorted(points, key=lambda q: q.cycle)
        return out
    finally:
        reader.close()


def finished(points: dict[str, list[Point]], engines: Sequence[TestEngine]) -> bool:
    """Every engine's last row has been scored and stored."""
    return all(
        bool(points.get(e.device)) and points[e.device][-1].cycle == e.length for e in engines
    )


def alarms_rows(db: Path) -> list[dict[str, Any]]:
    reader = _reader(db)
    try:
        return list(reader.alarms())
    except sqlite3.Error:
        return []
    finally:
        reader.close()


def alarms_settled(db: Path, points: dict[str, dict[str, list[Point]]]) -> bool:
    """Each engine whose last prediction is under the threshold has its alarm stored
    active (the site publishes the alarm as the prediction is made; they travel apart)."""
    active = {(a["site"], a["device"]) for a in alarms_rows(db) if a["state"] == "active"}
    return all(
        (site, device) in active
        for site, per in points.items()
        for device, pts in per.items()
        if pts and pts[-1].predicted < THRESHOLD
    )


def checkpoints(pts: Sequence[Point], n: int = 3) -> list[Point]:
    """``n`` predictions spread over the replay: the first, the last and between."""
    if len(pts) <= n:
        return list(pts)
    picks = sorted({round(i * (len(pts) - 1) / (n - 1)) for i in range(n)})
    return [pts[i] for i in picks]


def rmse(points: dict[str, dict[str, list[Point]]]) -> tuple[float | None, int]:
    """RMSE of every prediction against the true RUL capped at ``RUL_CAP`` (the target
    the task learns), and how many predictions."""
    errs = [
        (p.predicted - min(p.true_rul, RUL_CAP)) ** 2
        for per in points.values()
        for pts in per.values()
        for p in pts
    ]
    if not errs:
        return None, 0
    return (sum(errs) / len(errs)) ** 0.5, len(errs)


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    progress: Callable[[float], None] | None = None,
    step: float = 0.5,
) -> bool:
    """Poll ``check`` until it holds (True) or ``timeout`` passes (False)."""
    started = time.monotonic()
    while True:
        if check():
            return True
        elapsed = time.monotonic() - started
        if elapsed >= timeout:
            return False
        if progress is not None:
            progress(elapsed)
        time.sleep(step)


def table_rows(
    specs: Sequence[SiteSpec],
    engines: dict[str, list[TestEngine]],
    points: dict[str, dict[str, list[Point]]],
    active: set[tuple[str, str]],
) -> list[tuple[str, ...]]:
    """SITE, ENGINE, CYCLE, TRUE RUL, PREDICTED RUL, ERROR, ALARM: a few rows per engine."""
    rows: list[tuple[str, ...]] = []
    for spec in specs:
        for e in engines.get(spec.site_id, []):
            pts = points.get(spec.site_id, {}).get(e.device, [])
            if not pts:
                rows.append((spec.site_id, e.device, "-", "-", "no prediction", "-", "-"))
                continue
            for p in checkpoints(pts):
                alarm = "active" if p is pts[-1] and (spec.site_id, e.device) in active else ""
                rows.append((spec.site_id, e.device, str(p.cycle), str(p.true_rul),
                             f"{p.predicted:.1f}", f"{p.predicted - p.true_rul:+.1f}",
                             alarm))  # fmt: skip
    return rows


TABLE_HEADER = ("SITE", "ENGINE", "CYCLE", "TRUE RUL", "PREDICTED RUL", "ERROR", "ALARM")
