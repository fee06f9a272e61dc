"""The site's local history (site_node/history): store, bounds, summaries, export, config.

Unit tests on real SQLite files; the real-process tests (publish modes seen by a real
``fedmq serve``, kill -9 of a site) are in tests/test_site_history_e2e.py.
"""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import Sample, SensorSpec
from site_node.history import (
    History,
    HistorySettings,
    Summarizer,
    Tap,
    export_history,
    published_sensors,
)
from site_node.history.export import iso_utc
from site_node.history.store import QUALITY_CODES, read_readings
from site_node.settings import SiteSettings

DAY_MS = 86_400_000
T0 = 1_800_000_000_000  # a fixed "now" (2027-01-15)


def _row(ts: int, **values: float) -> list[Sample]:
    return [Sample(ts=ts, name=k, value=v, unit="u") for k, v in values.items()]


def _history(tmp_path: Path, clock: list[int] | None = None, **kw: Any) -> History:
    settings = HistorySettings(flush_interval_s=0.05, **kw)
    clock = clock if clock is not None else [T0]
    h = History(tmp_path / "history.db", settings, clock_ms=lambda: clock[0])
    h.start()
    return h


def _rows(path: Path) -> list[tuple[Any, ...]]:
    """(reading, ts, device, sensor, value, quality code) of every stored sample."""
    conn = sqlite3.connect(path)
    try:
        return [
            (r.id, r.ts, r.device, name, value, QUALITY_CODES[q])
            for r in read_readings(conn)
            for name, value, q in zip(r.names, r.values, r.quality, strict=True)
        ]
    finally:
        conn.close()


# -- store ------------------------------------------------------------------------------


def test_rows_are_committed_in_batches_and_survive_a_reopen(tmp_path: Path) -> None:
    h = _history(tmp_path)
    h.add_row("press", _row(T0, temp=20.5, vib=1.0))
    h.add_row("press", _row(T0, temp=21.0, vib=1.5))  # same millisecond: its own reading
    h.add("oven", Sample(ts=T0 + 1, name="temp", value=180.0, unit="C", q="bad"))
    assert h.flush()
    st = h.stats()
    assert (
        st["committed"] == 5 and st["readings"] == 3 and st["pending"] == 0 and st["commits"] >= 1
    )
    h.stop()
    rows = _rows(tmp_path / "history.db")
    assert rows == [
        (1, T0, "press", "temp", 20.5, 0),
        (1, T0, "press", "vib", 1.0, 0),
        (2, T0, "press", "temp", 21.0, 0),
        (2, T0, "press", "vib", 1.5, 0),
        (3, T0 + 1, "oven", "temp", 180.0, 2),
    ]
    h2 = _history(tmp_path)
    assert h2.stats()["readings"] == 3
    h2.add_row("press", _row(T0 + 2, temp=22.0))
    assert h2.flush()
    h2.stop()
    assert _rows(tmp_path / "history.db")[-1] == (4, T0 + 2, "press", "temp", 22.0, 0)


def test_stop_commits_what_is_pending(tmp_path: Path) -> None:
    h = History(tmp_path / "history.db", HistorySettings(flush_interval_s=60))
    h.start()
    for i in range(100):
        h.add_row("d", _row(T0 + i, x=float(i)))
    h.stop()
    assert len(_rows(tmp_path / "history.db")) == 100


def test_a_writer_behind_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    h = History(tmp_path / "history.db", HistorySettings(max_pending=1000, flush_interval_s=60))
    # Not started: nothing drains, so the bound is what holds.
    for i in range(1500):
        h.add_row("d", _row(T0 + i, x=float(i)))
    st = h.stats()
    assert st["pending"] == 1000 and st["dropped"] == 500


def test_readings_stored_longer_ago_than_max_age_are_pruned(tmp_path: Path) -> None:
    from tests.helpers.wait import wait_for

    clock = [T0 - 5 * DAY_MS]
    h = _history(tmp_path, clock, max_age_days=2, prune_interval_s=0.05)
    # Stored 5, 3, 1.5 and 0.5 days before T0; the values carry recorded times of 2015,
    # which do not matter: the bound is on when the site stored them.
    for stored_days_ago in (5, 3, 1.5, 0.5):
        clock[0] = T0 - int(stored_days_ago * DAY_MS)
        h.add_row("d", _row(1_420_070_400_000 + int(stored_days_ago), ago=stored_days_ago))
        assert h.flush()
    clock[0] = T0
    h.add_row("d", _row(1_420_070_400_000, ago=0.0))
    assert h.flush()
    wait_for(lambda: h.stats()["pruned_age"] == 2, 10, "age pruning")
    assert sorted(r[4] for r in _rows(tmp_path / "history.db")) == [0, 0.5, 1.5]
    clock[0] = T0 + DAY_MS  # a day later the reading stored 1.5 days before T0 is over too
    wait_for(lambda: h.stats()["pruned_age"] == 3, 10, "age pruning a day later")
    h.stop()
    assert sorted(r[4] for r in _rows(tmp_path / "history.db")) == [0, 0.5]
    assert h.stats()["readings"] == 2


def test_size_bound_prunes_the_oldest_and_the_file_stops_growing(tmp_path: Path) -> None:
    bound = 1024 * 1024
    h = _history(tmp_path, max_bytes=bound)
    sizes = []
    for batch in range(12):
        for i in range(5000):
            n = batch * 5000 + i
            h.add_row("d", _row(T0 + n, a=float(n), b=float(-n)))
        assert h.flush()
        sizes.append((tmp_path / "history.db").stat().st_size)
        assert h.stats()["used_bytes"] <= bound
    st = h.stats()
    h.stop()
    assert st["pruned_size"] > 0
    rows = _rows(tmp_path / "history.db")
    assert len(rows) == 2 * st["readings"] < 120_000
    values = sorted(r[4] for r in rows if r[3] == "a")
    # The newest samples are kept, contiguous up to the last one written.
    assert values[-1] == 59_999 and values == [float(v) for v in range(int(values[0]), 60_000)]
    # Freed pages are reused: once at the bound the file grows by at most about a batch.
    assert max(sizes[-4:]) - min(sizes[-4:]) < bound // 2, sizes


# -- summaries ----------------------------------------------------------------------------


def test_summary_windows_min_mean_max_count_and_quality(tmp_path: Path) -> None:
    out: list[tuple[str, list[Sample]]] = []
    clock = [T0]
    s = Summarizer(lambda d, row: out.append((d, row)), grace_s=1.0, clock_ms=lambda: clock[0])
    w = 10.0
    base = T0 - T0 % 10_000
    s.add_row("p", _row(base + 1, temp=3.0, vib=1.0), w)
    s.add_row(
        "p", [*_row(base + 2, temp=1.0), Sample(ts=base + 2, name="vib", value=9, q="bad")], w
    )
    s.add_row("p", [Sample(ts=base + 3, name="temp", value=5.0, unit="u", q="uncertain")], w)
    s.add_row("p", [Sample(ts=base + 4, name="dead", value=0, q="bad")], w)
    assert out == []
    s.add_row("p", _row(base + 10_000, temp=7.0), w)  # next window closes the first
    assert len(out) == 1
    device, row = out[0]
    got = {x.name: (x.value, x.unit, x.ts, x.q) for x in row}
    end = base + 10_000
    assert device == "p"
    assert got == {
        "temp.min": (1.0, "u", end, "uncertain"),
        "temp.mean": (3.0, "u", end, "uncertain"),
        "temp.max": (5.0, "u", end, "uncertain"),
        "temp.count": (3.0, "", end, "uncertain"),
        "vib.min": (1.0, "u", end, "uncertain"),
        "vib.mean": (1.0, "u", end, "uncertain"),
        "vib.max": (1.0, "u", end, "uncertain"),
        "vib.count": (1.0, "", end, "uncertain"),
        "dead.count": (0.0, "", end, "uncertain"),
    }
    s.add_row("p", _row(base + 5, temp=100.0), w)  # a closed window's sample: late
    assert s.late == 1 and len(out) == 1
    clock[0] = base + 20_000 + 500
    assert s.poll() == 0  # within the grace
    clock[0] = base + 21_001
    assert s.poll() == 1 and out[-1][1][0].ts == base + 20_000 and out[-1][1][0].value == 7.0
    s.add_row("q", _row(base + 30_001, x=2.0), w)
    assert s.flush_all() == 1 and out[-1][0] == "q" and s.windows == 3


def test_registration_lists_what_is_published() -> None:
    sensors = (SensorSpec(name="temp", unit="C"), SensorSpec(name="rpm", unit="rpm"))
    assert published_sensors(sensors, "raw") == sensors
    assert published_sensors(sensors, "none") == ()
    assert [(s.name, s.unit) for s in published_sensors(sensors, "summary")] == [
        ("temp.min", "C"), ("temp.mean", "C"), ("temp.max", "C"), ("temp.count", ""),
        ("rpm.min", "rpm"), ("rpm.mean", "rpm"), ("rpm.max", "rpm"), ("rpm.count", ""),
    ]  # fmt: skip


def test_tap_routes_by_publish_mode(tmp_path: Path) -> None:
    batched: list[tuple[str, list[Sample]]] = []
    h = _history(tmp_path)
    tap = Tap(lambda d, row: batched.append((d, list(row))), h)
    tap.row_emitter("r", "raw")(_row(T0, x=1.0))
    tap.row_emitter("s", "summary", 1.0)(_row(T0, x=2.0))
    tap.row_emitter("n", "none")(_row(T0, x=3.0))
    tap.emitter("n", "none")(Sample(ts=T0, name="x", value=4.0))
    assert [d for d, _ in batched] == ["r"]
    tap.summaries.flush_all()
    assert [d for d, _ in batched] == ["r", "s"]
    assert h.flush()
    h.stop()
    assert sorted((r[2], r[4]) for r in _rows(tmp_path / "history.db")) == [
        ("n", 3.0), ("n", 4.0), ("r", 1.0), ("s", 2.0)
    ]  # fmt: skip
    no_history = Tap(lambda d, row: None, None)
    with pytest.raises(ValueError, match="needs the history"):
        no_history.row_emitter("n", "none")


# -- export -------------------------------------------------------------------------------


def test_export_one_line_per_reading_with_iso_and_epoch_times(tmp_path: Path) -> None:
    h = _history(tmp_path)
    h.add_row("press", _row(T0 - 3 * DAY_MS, temp=1.0, vib=0.1))  # older than since_days
    h.add_row("press", _row(T0, temp=20.5, vib=1.0))
    h.add_row("press", [*_row(T0, temp=21.0), Sample(ts=T0, name="vib", value=0, q="bad")])
    h.add_row("other", _row(T0 + 1, temp=99.0))
    h.add_row("oven", _row(T0 + 2, heat=180.25, temp=30.0))
    assert h.flush()
    h.stop()
    out = tmp_path / "exports" / "ds.csv"
    res = export_history(tmp_path / "history.db", ["press", "oven"], out, since_days=1, now=T0)
    assert res.rows == 3 and res.path == out
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    lines = list(csv.reader(out.open()))
    assert lines == [
        ["timestamp", "ts_ms", "device", "temp", "vib", "heat"],
        [iso_utc(T0), str(T0), "press", "20.5", "1.0", ""],
        [iso_utc(T0), str(T0), "press", "21.0", "", ""],
        [iso_utc(T0 + 2), str(T0 + 2), "oven", "30.0", "", "180.25"],
    ]
    assert iso_utc(T0 + 2) == "2027-01-15T08:00:00.002Z"
    everything = export_history(tmp_path / "history.db", ["press"], out)
    assert everything.rows == 3
    missing = export_history(tmp_path / "nothing.db", ["press"], tmp_path / "e.csv")
    assert (
        missing.rows == 0 and (tmp_path / "e.csv").read_text().strip() == "timestamp,ts_ms,device"
    )


# -- settings -----------------------------------------------------------------------------


def _site(**kw: Any) -> SiteSettings:
    return SiteSettings.model_validate({"site_id": "s", **kw})


def test_settings_defaults_and_refusals() -> None:
    s = _site(devices=[{"name": "h", "source": "system"}])
    assert s.history.enabled and s.history.max_age_days == 30 and s.devices[0].publish == "raw"
    with pytest.raises(ValidationError, match="publish 'none' but"):
        _site(
            history={"enabled": False},
            devices=[{"name": "h", "source": "system", "publish": "none"}],
        )
    with pytest.raises(ValidationError, match="publish"):
        _site(devices=[{"name": "h", "source": "system", "publish": "everything"}])
    with pytest.raises(ValidationError, match="summary_window_s"):
        _site(devices=[{"name": "h", "source": "system", "summary_window_s": 0}])
    with pytest.raises(ValidationError, match="max_bytes"):
        _site(history={"max_bytes": 10})


# -- fedmq-site task check on a history dataset ---------------------------------------------


def test_task_check_trains_on_the_exported_history(tmp_path: Path) -> None:
    import subprocess
    import textwrap

    from site_node.sources.presets import CMAPSS_COLUMNS
    from tests.helpers.data import TRAIN_FD001
    from tests.helpers.site_proc import SITE_BIN, to_toml
    from tests.test_site_history_e2e import TASK_SOURCE

    data_dir = tmp_path / "data"
    h = History(data_dir / "history.db", HistorySettings(flush_interval_s=0.05))
    h.start()
    names = [n for n, _u in CMAPSS_COLUMNS]
    n_rows = 0
    for i, line in enumerate(TRAIN_FD001.read_text().splitlines()):
        values = [float(v) for v in line.split()]
        if values[0] > 3:
            break
        h.add_row(
            "engine",
            [Sample(ts=T0 + i, name=n, value=v) for n, v in zip(names, values, strict=True)],
        )
        n_rows += 1
    h.stop()
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hist_rul.py").write_text(textwrap.dedent(TASK_SOURCE))
    settings = {
        "site_id": "chk",
        "data_dir": str(data_dir),
        "devices": [{"name": "engine", "source": "file", "path": str(TRAIN_FD001),
                     "preset": "cmapss", "publish": "none"}],
        "training": {"tasks_dir": str(tmp_path / "tasks"), "allow": ["hist-rul"]},
    }  # fmt: skip
    toml = to_toml(settings) + (
        '[[training.datasets]]\nname = "eng"\ntask = "hist-rul"\nhistory = {devices = ["engine"]}\n'
    )
    (tmp_path / "site.toml").write_text(toml)
    out = subprocess.run(
        [str(SITE_BIN), "task", "check", "hist-rul", "--config", str(tmp_path / "site.toml")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    export = data_dir / "history-exports" / "eng.csv"
    assert f"{n_rows} rows from {export}" in out.stdout
    assert len(export.read_text().splitlines()) == n_rows + 1


def test_declared_sensors_make_an_empty_history_export_readable(tmp_path: Path) -> None:
    h = _history(tmp_path)
    h.declare("press", [SensorSpec(name="temp", unit="C"), SensorSpec(name="vib")])
    assert h.flush()
    res = export_history(tmp_path / "history.db", ["press"], tmp_path / "e.csv")
    assert res.rows == 0 and res.columns == ("timestamp", "ts_ms", "device", "temp", "vib")
    h.add_row("press", [Sample(ts=T0, name="temp", value=1.0, unit="C")])
    h.declare("press", [SensorSpec(name="temp", unit="C")])  # again: nothing new
    assert h.flush()
    h.stop()
    assert export_history(tmp_path / "history.db", ["press"], tmp_path / "e.csv").rows == 1
    import pandas as pd

    assert list(pd.read_csv(tmp_path / "e.csv").columns)[3:] == ["temp", "vib"]


def test_history_cli_show_and_export(tmp_path: Path) -> None:
    import json
    import subprocess

    from tests.helpers.site_proc import SITE_BIN, to_toml

    data_dir = tmp_path / "data"
    (tmp_path / "site.toml").write_text(
        to_toml({"site_id": "cli", "data_dir": str(data_dir),
                 "devices": [{"name": "host", "source": "system", "publish": "none"}]})
    )  # fmt: skip

    def site(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SITE_BIN), "history", *args, "--config", str(tmp_path / "site.toml")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    missing = site("show")
    assert missing.returncode == 3 and "no history" in missing.stderr
    h = History(data_dir / "history.db", HistorySettings())
    h.start()
    h.add_row("host", _row(T0, cpu=12.5, mem=40.0))
    h.add_row("host", _row(T0 + 1000, cpu=13.0, mem=41.0))
    h.stop()
    shown = site("show", "--json")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["devices"] == [
        {"device": "host", "publish": "none", "readings": 2, "first": iso_utc(T0),
         "last": iso_utc(T0 + 1000), "sensors": ["cpu", "mem"]}
    ]  # fmt: skip
    assert "host" in site("show").stdout
    out = tmp_path / "h.csv"
    done = site("export", "--device", "host", "--out", str(out))
    assert done.returncode == 0 and "2 readings" in done.stdout
    assert out.read_text().splitlines()[0] == "timestamp,ts_ms,device,cpu,mem"
    assert (
        site("export", "--device", "host", "--since-days", "0", "--out", str(out)).returncode == 2
    )


def test_data_list_names_a_history_dataset_not_hosted_yet(tmp_path: Path) -> None:
    import json
    import subprocess

    from tests.helpers.site_proc import SITE_BIN, to_toml

    toml = to_toml({"site_id": "dl", "data_dir": str(tmp_path / "data"),
                    "devices": [{"name": "host", "source": "system", "publish": "none"}],
                    "training": {"allow": ["cmapss-rul"]}})  # fmt: skip
    toml += (
        '[[training.datasets]]\nname = "mine"\ntask = "cmapss-rul"\n'
        'history = {devices = ["host"], since_days = 7}\n'
    )
    (tmp_path / "site.toml").write_text(toml)
    out = subprocess.run(
        [str(SITE_BIN), "data", "list", "--json", "--config", str(tmp_path / "site.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"name": "mine", "task": "cmapss-rul", "hosted": False, "rows": None,
         "paths": ["history of host, last 7 days"]}
    ]  # fmt: skip


def test_cmapss_rul_reads_a_history_export_as_it_reads_the_file(tmp_path: Path) -> None:
    import numpy as np

    from site_node.sources.presets import CMAPSS_COLUMNS
    from site_node.training.tasks import get_task
    from tests.helpers.data import TRAIN_FD001

    names = [n for n, _u in CMAPSS_COLUMNS]
    h = _history(tmp_path)
    h.declare("engine", [SensorSpec(name=n) for n in names if not n.startswith("op_")])
    for i, line in enumerate(TRAIN_FD001.read_text().splitlines()):
        values = dict(zip(names, (float(v) for v in line.split()), strict=True))
        if values["unit"] > 3:
            break
        h.add_row("engine", [Sample(ts=T0 + i, name=n, value=v) for n, v in values.items()
                             if not n.startswith("op_")])  # fmt: skip
    h.stop()
    out = export_history(tmp_path / "history.db", ["engine"], tmp_path / "e.csv")
    task = get_task("cmapss-rul")
    from_export = task.read_table([str(out.path)], {"units": [2, 3]})
    from_file = task.read_table([str(TRAIN_FD001)], {"units": [2, 3]})
    assert len(from_export) == len(from_file) > 0
    keep = ["unit", "cycle", *(f"s{i}" for i in range(1, 22))]
    assert np.array_equal(from_export[keep].to_numpy(), from_file[keep].to_numpy())
    a = task.load_dataset(from_export, {"units": [2, 3]})
    b = task.load_dataset(from_file, {"units": [2, 3]})
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_val, b.y_val)
