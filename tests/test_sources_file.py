"""File replay source: pacing, order, presets, row filters, looping, end of file."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from schemas import Sample
from site_node.sources import FileDeviceConfig, build_source
from site_node.sources.file_replay import FileSource
from tests.helpers.data import TRAIN_FD001
from tests.helpers.wait import wait_for

FD001 = TRAIN_FD001


def make(**kw: object) -> FileSource:
    cfg = FileDeviceConfig.model_validate({"name": "replay", "source": "file", **kw})
    src = build_source(cfg)
    assert isinstance(src, FileSource)
    return src


def run_to_end(src: FileSource, timeout: float = 10.0) -> list[Sample]:
    got: list[Sample] = []
    src.start(got.append)
    try:
        assert src.join(timeout), "replay did not finish"
    finally:
        src.stop()
    return got


def fd001_rows(keep: Callable[[int], bool]) -> list[list[float]]:
    """Rows of FD001 read independently of the source, as the oracle."""
    rows = [[float(x) for x in line.split()] for line in FD001.read_text().splitlines() if line]
    return [r for r in rows if keep(int(r[0]))]


def test_replays_every_row_in_order_at_the_rate(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("".join(f"{i} {i * 0.5}  \n" for i in range(20)))
    src = make(path=str(path), columns=[{"name": "n"}, {"name": "x", "unit": "bar"}], rate_hz=50)
    t0 = time.monotonic()
    got = run_to_end(src)
    elapsed = time.monotonic() - t0
    assert [s.value for s in got if s.name == "n"] == [float(i) for i in range(20)]
    assert [s.value for s in got if s.name == "x"] == [i * 0.5 for i in range(20)]
    assert {s.unit for s in got if s.name == "x"} == {"bar"}
    # 20 rows at 50/s cannot finish faster than 19 intervals (only slower on a busy box).
    assert elapsed >= 19 / 50 * 0.9
    ts = [s.ts for s in got]
    assert ts == sorted(ts) and ts[-1] - ts[0] >= 300
    stats = src.stats()
    assert (stats["rows"], stats["samples"], stats["finished"], stats["loops"]) == (20, 40, 1, 1)


def test_cmapss_preset_on_fd001_one_engine() -> None:
    src = make(path=str(FD001), preset="cmapss", include={"unit": [1]}, rate_hz=20_000)
    got = run_to_end(src, timeout=30)
    oracle = fd001_rows(lambda unit: unit == 1)
    assert len(got) == len(oracle) * 26
    rows = [got[i : i + 26] for i in range(0, len(got), 26)]
    names = [s.name for s in rows[0]]
    assert names[:5] == ["unit", "cycle", "op_setting_1", "op_setting_2", "op_setting_3"]
    assert names[5:] == [f"s{i}" for i in range(1, 22)]
    assert [[s.value for s in row] for row in rows] == oracle
    units = {s.name: s.unit for s in rows[0]}
    assert (units["s2"], units["s7"], units["s9"], units["s21"]) == ("degR", "psia", "rpm", "lbm/s")
    assert all(s.q == "good" for s in got)
    stats = src.stats()
    assert stats["rows"] == len(oracle)
    assert stats["filtered"] == len(fd001_rows(lambda unit: True)) - len(oracle)


def test_cmapss_range_filter_and_exclude() -> None:
    src = make(
        path=str(FD001),
        preset="cmapss",
        include={"unit": {"min": 2, "max": 4}},
        exclude=["op_setting_1", "op_setting_2", "op_setting_3"],
        rate_hz=50_000,
    )
    assert len(src.sensors()) == 23
    got = run_to_end(src, timeout=30)
    oracle = fd001_rows(lambda unit: 2 <= unit <= 4)
    assert src.stats()["rows"] == len(oracle)
    assert len(got) == len(oracle) * 23
    assert sorted({s.value for s in got if s.name == "unit"}) == [2.0, 3.0, 4.0]
    assert not any(s.name.startswith("op_setting") for s in got)


def test_loop_restarts_from_the_top(tmp_path: Path) -> None:
    path = tmp_path / "three.csv"
    path.write_text("1\n2\n3\n")
    src = make(path=str(path), format="csv", columns=[{"name": "v"}], rate_hz=1000, loop=True)
    got: list[Sample] = []
    src.start(got.append)
    try:
        wait_for(lambda: src.stats()["rows"] >= 8)
    finally:
        src.stop()
    assert [s.value for s in got[:8]] == [1, 2, 3, 1, 2, 3, 1, 2]
    assert src.stats()["loops"] >= 2
    assert src.stats()["finished"] == 0


def test_loop_with_every_row_filtered_stops_instead_of_spinning(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("1\n2\n")
    src = make(path=str(path), format="csv", columns=[{"name": "v"}], loop=True, include={"v": [9]})
    assert run_to_end(src) == []
    assert src.stats()["finished"] == 1
    assert src.stats()["filtered"] == 2


def test_csv_header_picks_columns_by_name(tmp_path: Path) -> None:
    path = tmp_path / "pump.csv"
    path.write_text("time,pressure,extra,flow\n0,1.5,x,10\n1,1.6,y,11\n")
    src = make(
        path=str(path),
        format="csv",
        header=True,
        columns=[{"name": "flow", "unit": "m3/h"}, {"name": "pressure", "unit": "bar"}],
        rate_hz=1000,
    )
    got = run_to_end(src)
    assert [(s.name, s.value, s.unit) for s in got] == [
        ("flow", 10.0, "m3/h"),
        ("pressure", 1.5, "bar"),
        ("flow", 11.0, "m3/h"),
        ("pressure", 1.6, "bar"),
    ]


def test_malformed_rows_counted_and_missing_values_bad(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_text("1 2\nfoo bar\n3\n\n4 nan\n5 6 7\n8 9\n")
    src = make(path=str(path), columns=[{"name": "a"}, {"name": "b"}], rate_hz=1000)
    got = run_to_end(src)
    assert [(s.name, s.value, s.q) for s in got] == [
        ("a", 1.0, "good"),
        ("b", 2.0, "good"),
        ("a", 4.0, "good"),
        ("b", 0.0, "bad"),
        ("a", 8.0, "good"),
        ("b", 9.0, "good"),
    ]
    stats = src.stats()
    assert (stats["rows"], stats["malformed"], stats["bad_values"]) == (3, 3, 1)


def test_missing_file_is_retried_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "later.txt"
    src = make(path=str(path), columns=[{"name": "v"}], rate_hz=1000)
    got: list[Sample] = []
    src.start(got.append)
    try:
        wait_for(lambda: src.stats()["open_failures"] >= 1)
        path.write_text("42\n")
        assert src.join(10)
    finally:
        src.stop()
    assert [s.value for s in got] == [42.0]


def test_stop_during_slow_replay_is_prompt(tmp_path: Path) -> None:
    path = tmp_path / "slow.txt"
    path.write_text("1\n2\n3\n")
    src = make(path=str(path), columns=[{"name": "v"}], rate_hz=0.02)
    got: list[Sample] = []
    src.start(got.append)
    wait_for(lambda: len(got) == 1)
    src.stop()
    # The next row is 50 s away: ending well before it means stop() cut the wait short
    # (a deadline, not a stopwatch, so a loaded machine does not fail it).
    assert src.join(15)
    assert not src.running
    assert src.stats()["rows"] == 1
