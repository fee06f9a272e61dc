"""File replay with recorded times and one device per machine (issue 17, item 3)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import Sample
from site_node.sources import FileDeviceConfig, build_source, parse_devices
from site_node.sources.file_replay import FileSource
from site_node.sources.parsing import MalformedLine, TimestampParser

PDM_HEADER = "datetime,machineID,volt,rotate,pressure,vibration\n"
PDM_COLUMNS = [
    {"name": "volt", "unit": "V"},
    {"name": "rotate", "unit": "rpm"},
    {"name": "pressure", "unit": "psi"},
    {"name": "vibration", "unit": "mm/s"},
]


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


def make(**kw: object) -> FileSource:
    cfg = FileDeviceConfig.model_validate({"name": "pdm", "source": "file", **kw})
    src = build_source(cfg)
    assert isinstance(src, FileSource)
    return src


class Router:
    """What the daemon does for a split source: one row list per device."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Sequence[Sample]]] = {}
        self.found: list[str] = []

    def emit_for(self, device: str) -> object:
        self.rows.setdefault(device, [])
        return self.rows[device].append

    def run(self, src: FileSource, timeout: float = 10.0) -> None:
        src.route(self.emit_for, self.found.append)  # type: ignore[arg-type]
        src.start(lambda s: pytest.fail(f"sample without device: {s}"))
        try:
            assert src.join(timeout), "replay did not finish"
        finally:
            src.stop()


def run_single(src: FileSource) -> list[Sequence[Sample]]:
    rows: list[Sequence[Sample]] = []
    src.start(lambda s: rows.append([s]), rows.append)
    try:
        assert src.join(10), "replay did not finish"
    finally:
        src.stop()
    return rows


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        ("iso", "2015-01-01 06:00:00", ms("2015-01-01T06:00:00")),
        ("iso", "2015-01-01T06:00:00Z", ms("2015-01-01T06:00:00")),
        ("iso", "2015-01-01T07:00:00.250+01:00", ms("2015-01-01T06:00:00") + 250),
        ("iso", '"2015-01-01 06:00:00"', ms("2015-01-01T06:00:00")),
        ("%d/%m/%Y %H:%M", "02/01/2015 06:30", ms("2015-01-02T06:30:00")),
        ("epoch_s", "1420092000", ms("2015-01-01T06:00:00")),
        ("epoch_s", "1420092000.5", ms("2015-01-01T06:00:00") + 500),
        ("epoch_ms", "1420092000123", ms("2015-01-01T06:00:00") + 123),
    ],
)
def test_timestamp_formats(fmt: str, text: str, expected: int) -> None:
    assert TimestampParser(fmt)(text) == expected


def test_naive_times_read_in_the_configured_zone() -> None:
    from zoneinfo import ZoneInfo

    berlin = TimestampParser("iso", ZoneInfo("Europe/Berlin"))
    assert berlin("2015-01-01 07:00:00") == ms("2015-01-01T06:00:00")
    assert berlin("2015-07-01 08:00:00") == ms("2015-07-01T06:00:00")  # summer time
    # An explicit offset wins over the zone.
    assert berlin("2015-01-01T06:00:00Z") == ms("2015-01-01T06:00:00")


@pytest.mark.parametrize(
    ("fmt", "text", "why"),
    [
        ("iso", "yesterday", "not iso"),
        ("iso", "", "missing"),
        ("%d/%m/%Y", "2015-01-01", "not %d/%m/%Y"),
        ("epoch_s", "x12", "not a number"),
        ("epoch_s", "nan", "out of range"),
        ("epoch_ms", "-5", "out of range"),
        ("epoch_s", "1e20", "out of range"),
    ],
)
def test_bad_timestamps_are_malformed(fmt: str, text: str, why: str) -> None:
    with pytest.raises(MalformedLine, match=why):
        TimestampParser(fmt)(text)


def test_excluded_text_column_is_ignored_not_malformed(tmp_path: Path) -> None:
    # Before issue 17 every row of this file was "malformed": the excluded column was
    # still parsed as a number.
    path = tmp_path / "log.csv"
    path.write_text("2015-01-01 06:00:00,1,176.2\n2015-01-01 07:00:00,1,162.9\n")
    src = make(
        path=str(path),
        format="csv",
        columns=[{"name": "datetime"}, {"name": "machineID"}, {"name": "volt", "unit": "V"}],
        exclude=["datetime", "machineID"],
        rate_hz=1000,
    )
    rows = run_single(src)
    assert [[(s.name, s.value) for s in r] for r in rows] == [
        [("volt", 176.2)],
        [("volt", 162.9)],
    ]
    assert src.stats()["malformed"] == 0
    assert not src.historical


def test_recorded_times_kept_and_source_historical(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("ts,volt\n2015-01-01 06:00:00,176.2\n2015-01-01 07:00:00,nan\nnot a time,1\n")
    src = make(
        path=str(path),
        format="csv",
        header=True,
        columns=[{"name": "volt", "unit": "V"}],
        timestamp_column="ts",
        rate_hz=1000,
    )
    assert src.historical
    assert [s.name for s in src.sensors()] == ["volt"]
    rows = run_single(src)
    assert [[(s.ts, s.value, s.q) for s in r] for r in rows] == [
        [(ms("2015-01-01T06:00:00"), 176.2, "good")],
        [(ms("2015-01-01T07:00:00"), 0.0, "bad")],
    ]
    assert src.stats()["malformed"] == 1


def test_positional_timestamp_column_epoch_ms(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("1420092000000 1.5\n1420092001000 2.5\n")
    src = make(
        path=str(path),
        columns=[{"name": "t"}, {"name": "x"}],
        timestamp_column="t",
        timestamp_format="epoch_ms",
        rate_hz=1000,
    )
    rows = run_single(src)
    assert [(r[0].ts, r[0].name) for r in rows] == [(1420092000000, "x"), (1420092001000, "x")]


def test_device_column_splits_one_file_into_machines(tmp_path: Path) -> None:
    path = tmp_path / "PdM_telemetry.csv"
    lines = [PDM_HEADER]
    for hour in range(3):
        for machine in (1, 2, 3):
            lines.append(f"2015-01-01 {6 + hour:02d}:00:00,{machine},{170 + machine},{hour},1,2\n")
    lines.append("2015-01-02 06:00:00,4.0,1,2,3,4\n")  # a new machine, mid-file, as "4.0"
    path.write_text("".join(lines))
    src = make(
        path=str(path),
        format="csv",
        header=True,
        columns=PDM_COLUMNS,
        timestamp_column="datetime",
        device_column="machineID",
        rate_hz=10_000,
    )
    router = Router()
    router.run(src)
    assert router.found == ["pdm-1", "pdm-2", "pdm-3", "pdm-4"]
    assert src.devices() == ("pdm-1", "pdm-2", "pdm-3", "pdm-4")
    assert [len(router.rows[d]) for d in router.found] == [3, 3, 3, 1]
    m2 = router.rows["pdm-2"]
    assert [r[0].ts for r in m2] == [ms(f"2015-01-01T{h:02d}:00:00") for h in (6, 7, 8)]
    assert [[s.name for s in r] for r in m2] == [["volt", "rotate", "pressure", "vibration"]] * 3
    assert {r[0].value for r in m2} == {172.0}
    stats = src.stats()
    assert (stats["devices"], stats["rows"], stats["malformed"]) == (4, 10, 0)


def test_max_devices_drops_and_counts_further_machines(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("m,v\n1,1\n2,2\n3,3\n1,4\nbad.id,5\n3,6\n")
    src = make(
        path=str(path),
        format="csv",
        header=True,
        columns=[{"name": "v"}],
        device_column="m",
        max_devices=2,
        rate_hz=10_000,
    )
    router = Router()
    router.run(src)
    assert router.found == ["pdm-1", "pdm-2"]
    assert [r[0].value for r in router.rows["pdm-1"]] == [1.0, 4.0]
    stats = src.stats()
    assert (stats["device_limit"], stats["malformed"], stats["rows"]) == (2, 1, 3)


def test_split_source_must_be_routed(tmp_path: Path) -> None:
    src = make(path=str(tmp_path / "x"), columns=[{"name": "m"}, {"name": "v"}], device_column="m")
    with pytest.raises(RuntimeError, match="route"):
        src.start(lambda s: None)


def test_header_lacking_a_header_only_column_stops_with_a_count(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("when,v\n2015-01-01,1\n")
    src = make(path=str(path), format="csv", header=True, columns=[{"name": "v"}],
               timestamp_column="datetime", rate_hz=1000)  # fmt: skip
    assert run_single(src) == []
    assert src.stats()["header_errors"] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"timestamp_column": "nope"}, "timestamp_column 'nope' is not one of the columns"),
        ({"device_column": "nope"}, "device_column 'nope' is not one of the columns"),
        ({"timestamp_column": "a", "loop": True}, "loop = true would replay"),
        ({"timestamp_column": "a", "device_column": "a"}, "must differ"),
        ({"timestamp_format": "dd.mm.yyyy"}, "use iso, epoch_s, epoch_ms or a strftime"),
        ({"timezone": "Mars/Olympus"}, "not UTC nor a known IANA zone"),
        ({"device_column": "a", "max_devices": 257}, "less than or equal to 256"),
        ({"timestamp_column": "a", "exclude": ["b"]}, "exclude leaves no column"),
    ],
)
def test_invalid_file_options(extra: dict[str, object], message: str) -> None:
    raw = {"name": "f", "source": "file", "path": "x", "columns": [{"name": "a"}, {"name": "b"}]}
    with pytest.raises(ValidationError, match=message):
        FileDeviceConfig.model_validate({**raw, **extra})


def test_split_device_names_may_not_collide_with_other_devices() -> None:
    split: dict[str, object] = {"name": "pdm", "source": "file", "path": "x", "format": "csv"}
    split |= {"columns": [{"name": "m"}, {"name": "v"}], "device_column": "m"}
    with pytest.raises(ValueError, match="could collide"):
        parse_devices([split, {"name": "pdm-1", "source": "system"}])
    assert len(parse_devices([split, {"name": "pdm1", "source": "system"}])) == 2
