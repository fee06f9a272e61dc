"""Publish modes and history with real processes: a real Mosquitto, real ``fedmq serve``
and ``fedmq-site run`` subprocesses, their SQLite files read as they are.

- raw / summary / none side by side: the coordinator stores every raw sample, only the
  window aggregates of the summary device (checked against the site's own history), and
  nothing of the history-only device;
- kill -9 of a site loses no committed history row;
- a ``publish = "none"`` device's history trains a task (a task folder outside the
  repository reading the exported CSV) in a real ``fedmq train`` round, while the
  coordinator holds none of that device's samples.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import textwrap
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator.admin.signing import generate_keypair
from site_node.history.store import read_readings
from site_node.outbox_store import read_stats
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, sites_json, wait_until
from tests.helpers.data import TRAIN_FD001
from tests.helpers.db import query
from tests.helpers.site_proc import SiteProc, counter_file, site_settings

pytestmark = pytest.mark.slow


def _history(data_dir: Path, device: str) -> list[tuple[int, int, str, float]]:
    """(reading, ts, sensor, value) of one device in a site's history, committed rows."""
    path = data_dir / "history.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [
            (r.id, r.ts, name, value)
            for r in read_readings(conn, [device])
            for name, value in zip(r.names, r.values, strict=True)
        ]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _file_device(name: str, path: Path, rate_hz: float, **kw: Any) -> dict[str, Any]:
    return {"name": name, "source": "file", "path": str(path), "format": "csv",
            "columns": [{"name": "n", "unit": "count"}], "rate_hz": rate_hz, **kw}  # fmt: skip


def test_raw_summary_and_none_as_the_coordinator_stores_them(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    rows = 60
    db = tmp_path / "c.db"
    coord = Coordinator(db, own_broker.port, prefix).start()
    devices = [
        _file_device("raw", counter_file(tmp_path / "raw.csv", rows), 30.0),
        _file_device("summ", counter_file(tmp_path / "summ.csv", rows), 30.0,
                     publish="summary", summary_window_s=1.0),
        _file_device("quiet", counter_file(tmp_path / "quiet.csv", rows), 30.0, publish="none"),
    ]  # fmt: skip
    settings = site_settings(tmp_path, own_broker.port, prefix, site_id="hist", devices=devices)
    site = SiteProc(tmp_path / "site", settings)
    try:
        coord.wait_ready()
        site.start()

        def drained() -> bool:
            # Every source played its file, every summary window closed and sent, every
            # durable row acked by the coordinator.
            st = read_stats(site.data_dir / "outbox.db")
            counts = query(db, "SELECT sum(value) FROM telemetry WHERE site = 'hist' "
                              "AND device = 'summ' AND name = 'n.count'")  # fmt: skip
            return (
                len(_history(site.data_dir, "quiet")) == rows
                and bool(counts) and counts[0][0] == rows
                and st.depth == 0 and st.last_acked == st.last_seq > 0
            )  # fmt: skip

        wait_until(drained, 90, "all files played, summarized and acked", step=0.3)
        # Nothing of the history-only device reached the coordinator.
        assert query(db, "SELECT count(*) FROM telemetry WHERE device = 'quiet'") == [(0,)]
        assert query(db, "SELECT count(*) FROM devices WHERE device = 'quiet'") in ([(0,)], [])
        # Raw: every sample, as the history holds it.
        raw = query(db, "SELECT ts, value FROM telemetry WHERE site = 'hist' AND device = 'raw'")
        hist_raw = [(ts, v) for _r, ts, _n, v in _history(site.data_dir, "raw")]
        assert sorted(raw) == sorted(hist_raw) and len(raw) == rows
        # Summary: only the aggregates, each window's exactly what the history says.
        stored = query(
            db,
            "SELECT ts, name, value, unit FROM telemetry WHERE site = 'hist' AND device = 'summ'",
        )
        assert {n for _t, n, _v, _u in stored} == {"n.min", "n.mean", "n.max", "n.count"}
        assert {(n, u) for _t, n, _v, u in stored} == {
            ("n.min", "count"), ("n.mean", "count"), ("n.max", "count"), ("n.count", "")
        }  # fmt: skip
        windows: dict[int, dict[str, float]] = defaultdict(dict)
        for ts, name, value, _unit in stored:
            assert name not in windows[ts], f"window {ts} sent twice"
            windows[ts][name] = value
        expected: dict[int, list[float]] = defaultdict(list)
        for _r, ts, _n, v in _history(site.data_dir, "summ"):
            expected[ts - ts % 1000 + 1000].append(v)
        assert sorted(windows) == sorted(expected)
        for end, values in expected.items():
            got = windows[end]
            assert got["n.count"] == len(values)
            assert got["n.min"] == min(values) and got["n.max"] == max(values)
            assert math.isclose(got["n.mean"], sum(values) / len(values))
        # The registration says what is published of each device.
        reg = json.loads(query(db, "SELECT registration FROM sites WHERE site = 'hist'")[0][0])
        tele = {d["device"]: d for d in reg["telemetry"]}
        assert tele["raw"]["publish"] == "raw" and [s["name"] for s in tele["raw"]["sensors"]] == [
            "n"
        ]
        assert tele["summ"]["publish"] == "summary" and tele["summ"]["summary_window_s"] == 1.0
        assert [s["name"] for s in tele["summ"]["sensors"]] == [
            "n.min",
            "n.mean",
            "n.max",
            "n.count",
        ]
        assert tele["quiet"]["publish"] == "none" and tele["quiet"]["sensors"] == []
    finally:
        site.kill()
        coord.kill()


def test_kill9_loses_no_committed_history_row(
    own_broker: Broker, prefix: str, tmp_path: Path
) -> None:
    devices = [_file_device("quiet", counter_file(tmp_path / "q.csv", 1_000_000), 400.0,
                            publish="none")]  # fmt: skip
    settings = site_settings(tmp_path, own_broker.port, prefix, site_id="k9", devices=devices)
    site = SiteProc(tmp_path / "site", settings).start()
    try:
        wait_until(lambda: len(_history(site.data_dir, "quiet")) >= 2000, 60, "2000 rows")
        before = {v for _r, _t, _n, v in _history(site.data_dir, "quiet")}
        site.kill()
    finally:
        site.kill()
    after = [v for _r, _t, _n, v in _history(site.data_dir, "quiet")]
    assert before <= set(after), "a committed history row was lost"
    # What was committed is the file's rows in order, without a hole: a crash loses only
    # the uncommitted tail (at most flush_interval_s of samples).
    assert after == [float(i) for i in range(len(after))]
    # publish = "none": nothing of it ever entered the outbox.
    assert read_stats(site.data_dir / "outbox.db").last_seq == 0


# -- training on the history ----------------------------------------------------------------

TASK = "hist-rul"
TASK_SOURCE = '''
"""A tiny task for tests: RUL by least squares on the history export (numpy only)."""
from __future__ import annotations

import io
from typing import Any

import numpy as np

NAME = "hist-rul"
VERSION = "1"
DEFAULTS: dict[str, Any] = {"epochs": 1, "seed": 0}
METRICS = {"rmse": "min"}
PRIMARY_METRIC = "rmse"
OUTPUTS = {"rul": "cycles"}
WINDOW = 1
FEATURES = ["s2", "s3", "s4", "s7", "s11", "s12", "s15", "s20", "s21"]


def read_table(paths, params):
    import pandas as pd

    table = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    return table[["timestamp", "ts_ms", "device", "unit", "cycle", *FEATURES]].dropna()


def _xy(table):
    x = table[FEATURES].to_numpy(float)
    x = np.hstack([(x - x.mean(0)) / (x.std(0) + 1e-9), np.ones((len(x), 1))])
    rul = table.groupby("unit")["cycle"].transform("max") - table["cycle"]
    return x, np.minimum(rul.to_numpy(float), 125.0)


def load_dataset(table, params):
    if not hasattr(table, "columns"):
        table = read_table(table, params)
    x, y = _xy(table)
    val = table["unit"].to_numpy() == table["unit"].max()
    return {"xt": x[~val], "yt": y[~val], "xv": x[val], "yv": y[val]}


def _npz(w):
    buf = io.BytesIO()
    np.savez(buf, w=w.astype(np.float32))
    return buf.getvalue()


def initial_weights(seed):
    return _npz(np.zeros(len(FEATURES) + 1))


def evaluate(weights, data):
    if len(data["yv"]) == 0:
        return {"rmse": "no validation rows"}
    w = np.load(io.BytesIO(weights), allow_pickle=False)["w"]
    return {"rmse": float(np.sqrt(np.mean((data["xv"] @ w - data["yv"]) ** 2)))}


def train(global_weights, data, hyperparams, progress=None):
    w, *_ = np.linalg.lstsq(data["xt"], data["yt"], rcond=None)
    if progress is not None:
        progress(1.0)
    weights = _npz(w)
    scored = evaluate(weights, data)
    return weights, int(len(data["yt"])), {k: v for k, v in scored.items() if isinstance(v, float)}


def predict(weights, window, params):
    raise ValueError("not used in this test")
'''


@pytest.mark.train
def test_history_only_device_trains_a_task_and_none_of_it_reaches_the_coordinator(
    broker_factory: Callable[..., Broker], prefix: str, tmp_path: Path
) -> None:
    broker = broker_factory()
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "hist_rul.py").write_text(textwrap.dedent(TASK_SOURCE))
    generate_keypair(tmp_path / "coord.key", tmp_path / "coord.pub")
    db = tmp_path / "c.db"
    coord = Coordinator(db, broker.port, prefix, ("--signing-key", str(tmp_path / "coord.key")))
    engine = {
        "name": "engine", "source": "file", "path": str(TRAIN_FD001), "preset": "cmapss",
        "format": "whitespace", "rate_hz": 300.0, "include": {"unit": {"min": 1, "max": 4}},
        "exclude": ["op_setting_1", "op_setting_2", "op_setting_3"], "publish": "none",
    }  # fmt: skip
    training = {
        "tasks_dir": str(tasks_dir), "allow": [TASK],
        "datasets": [{"name": "engine-history", "task": TASK,
                      "history": {"devices": ["engine"], "since_days": 1}}],
    }  # fmt: skip
    settings = site_settings(
        tmp_path, broker.port, prefix, site_id="h-train", devices=[engine], training=training,
        coordinator_public_key_file=str(tmp_path / "coord.pub"),
    )  # fmt: skip
    site = SiteProc(tmp_path / "site", settings)
    expected_rows = sum(
        1 for line in TRAIN_FD001.read_text().splitlines() if line.strip() and
        1 <= float(line.split()[0]) <= 4
    )  # fmt: skip
    try:
        coord.start().wait_ready(60)
        site.start()
        wait_until(
            lambda: TASK in sites_json(db).get("h-train", {}).get("tasks", []),
            240, "the site offers the history task", step=1.0,
        )  # fmt: skip
        # The replay has finished (the whole selection is in the history) before the job.
        wait_until(
            lambda: len({r for r, *_ in _history(site.data_dir, "engine")}) == expected_rows,
            120, "engines 1-4 in the history", step=0.5,
        )  # fmt: skip
        proc = fedmq(
            "train", "--task", TASK, "--rounds", "1", "--min-sites", "1", "--sites", "h-train",
            "--round-timeout", "200", "--db", str(db), "--json", timeout=280, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:] + site.log_text()[-3000:]
        events = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        run_id = events[0]["run_id"]
        assert events[-1]["state"] == "done"
        jobs = json.loads(fedmq("jobs", "--run", run_id, "--db", str(db), "--json").stdout)
        assert [j["state"] for j in jobs] == ["done"]
        # The job trained on the history exported for it: every replayed row of engines
        # 1-3 (engine 4 is the validation split), and the registration says so.
        export = site.data_dir / "history-exports" / "engine-history.csv"
        lines = list(csv.DictReader(export.open()))
        assert len(lines) == expected_rows
        assert oct(export.stat().st_mode & 0o777) == "0o600"
        assert list(lines[0])[:5] == ["timestamp", "ts_ms", "device", "unit", "cycle"]
        n_train = sum(1 for row in lines if float(row["unit"]) != 4.0)
        models = json.loads(fedmq("models", "--run", run_id, "--db", str(db), "--json").stdout)
        assert [m["n_samples"] for m in models] == [n_train]
        reg = json.loads(query(db, "SELECT registration FROM sites WHERE site = 'h-train'")[0][0])
        assert [(d["name"], d["rows"]) for d in reg["datasets"]] == [
            ("engine-history", expected_rows)
        ]
        assert [(d["device"], d["publish"], d["sensors"]) for d in reg["telemetry"]] == [
            ("engine", "none", [])
        ]
        # The coordinator database holds none of the device's samples.
        assert query(db, "SELECT count(*) FROM telemetry WHERE site = 'h-train'") == [(0,)]
        assert query(db, "SELECT count(*) FROM telemetry WHERE device = 'engine'") == [(0,)]
    finally:
        site.kill()
        coord.kill()
        broker.kill()
