"""Line parsing tables: what becomes a sample, a q=bad sample, or a malformed line."""

from __future__ import annotations

import pytest

from site_node.sources import ColumnSpec
from site_node.sources.parsing import CsvLineParser, JsonLineParser, MalformedLine, parse_number

NOW = 1_700_000_000_000
COLS = (ColumnSpec(name="temp", unit="C"), ColumnSpec(name="vib", unit="mm/s"))


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("21.5", 21.5),
        (" -3e2 ", -300.0),
        ("0", 0.0),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-Infinity", None),
        ("1e999", None),
        ("", None),
        ("N/A", None),
        ("null", None),
    ],
)
def test_parse_number(token: str, expected: float | None) -> None:
    assert parse_number(token) == expected


@pytest.mark.parametrize("token", ["abc", "21.5C", "0x10", "1,5"])
def test_parse_number_rejects_text(token: str) -> None:
    with pytest.raises(MalformedLine, match="not a number"):
        parse_number(token)


@pytest.mark.parametrize(
    ("line", "delimiter", "expected"),
    [
        ("21.5,3.2", ",", [("temp", 21.5, "C", "good"), ("vib", 3.2, "mm/s", "good")]),
        (" 21.5 , 3.2 ", ",", [("temp", 21.5, "C", "good"), ("vib", 3.2, "mm/s", "good")]),
        ("21.5;nan", ";", [("temp", 21.5, "C", "good"), ("vib", 0.0, "mm/s", "bad")]),
        ("21.5,", ",", [("temp", 21.5, "C", "good"), ("vib", 0.0, "mm/s", "bad")]),
        ("21.5   3.2\t", " ", [("temp", 21.5, "C", "good"), ("vib", 3.2, "mm/s", "good")]),
    ],
)
def test_csv_good_lines(line: str, delimiter: str, expected: list[tuple]) -> None:
    samples = CsvLineParser(COLS, delimiter).parse(line, NOW)
    assert [(s.name, s.value, s.unit, s.q) for s in samples] == expected
    assert {s.ts for s in samples} == {NOW}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("21.5", "1 fields, expected 2"),
        ("21.5,3.2,7", "3 fields, expected 2"),
        ("hello,world", "not a number"),
        ("21.5,3.2C", "not a number"),
        ("garbage", "1 fields"),
    ],
)
def test_csv_malformed_lines(line: str, why: str) -> None:
    with pytest.raises(MalformedLine, match=why):
        CsvLineParser(COLS).parse(line, NOW)


def test_csv_exclude_and_timestamp_column() -> None:
    cols = (ColumnSpec(name="t"), *COLS)
    parser = CsvLineParser(cols, exclude=["vib"], timestamp_column="t", timestamp_unit="ms")
    (sample,) = parser.parse("1600000000123,20,5", NOW)
    assert (sample.name, sample.ts, sample.value) == ("temp", 1600000000123, 20.0)
    # A broken excluded column still marks the line: the device is sending something else.
    with pytest.raises(MalformedLine):
        parser.parse("1600000000123,20,x", NOW)
    for bad_ts in ("nan", "-5", "1e20"):
        with pytest.raises(MalformedLine, match="timestamp"):
            parser.parse(f"{bad_ts},20,5", NOW)


JSON = JsonLineParser({"temp": "C", "rpm": "rpm"}, exclude=["debug"])


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"temp": 21.5, "rpm": 1480}',
            [("temp", 21.5, "C", "good"), ("rpm", 1480.0, "rpm", "good")],
        ),
        ('{"temp": "21.5"}', [("temp", 21.5, "C", "good")]),
        ('{"temp": null}', [("temp", 0.0, "C", "bad")]),
        ('{"temp": NaN}', [("temp", 0.0, "C", "bad")]),
        ('{"door": true}', [("door", 1.0, "", "good")]),
        ('{"temp": 1, "debug": 5}', [("temp", 1.0, "C", "good")]),
        ('{"name": "p", "value": 2.5, "unit": "bar"}', [("p", 2.5, "bar", "good")]),
        ('{"name": "temp", "value": 2, "q": "uncertain"}', [("temp", 2.0, "C", "uncertain")]),
        (
            '[{"name": "a", "value": 1}, {"name": "b", "value": null}]',
            [("a", 1.0, "", "good"), ("b", 0.0, "", "bad")],
        ),
    ],
)
def test_json_good_lines(line: str, expected: list[tuple]) -> None:
    samples = JSON.parse(line, NOW)
    assert [(s.name, s.value, s.unit, s.q) for s in samples] == expected


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "name, value"),
        ("[]", "empty JSON list"),
        ("42", "expected a JSON object"),
        ("{}", "no readings"),
        ('{"ts": 5}', "no readings"),
        ('{"temp": "hot"}', "not a number"),
        ('{"temp": {"v": 1}}', "not a number"),
        ('{"name": 5, "value": 1}', "name must be a string"),
        ('{"name": "a", "value": 1, "q": "great"}', "quality"),
        ('{"name": "", "value": 1}', "invalid sample"),
        ('{"temp": 1, "ts": "yesterday"}', "not a number"),
    ],
)
def test_json_malformed_lines(line: str, why: str) -> None:
    with pytest.raises(MalformedLine, match=why):
        JSON.parse(line, NOW)


def test_json_timestamps() -> None:
    (s,) = JSON.parse('{"temp": 1, "ts": 1600000000000}', NOW)
    assert s.ts == 1600000000000
    parser = JsonLineParser({}, timestamp_field="time", timestamp_unit="s")
    (s,) = parser.parse('{"x": 1, "time": 1600000000.5}', NOW)
    assert (s.name, s.ts) == ("x", 1600000000500)
    with pytest.raises(MalformedLine, match="missing timestamp field"):
        parser.parse('{"x": 1}', NOW)
