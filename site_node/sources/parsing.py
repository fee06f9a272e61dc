"""Turn one text line (CSV/whitespace or JSON) into samples, or say why it is malformed.

Rules, shared by the serial and file sources:

- a reading the device marks as missing (``nan``, ``inf``, an empty cell, JSON ``null``)
  becomes ``q="bad"`` with ``value=0.0``, because the wire cannot carry NaN;
- anything else that is not a number (text, a nested object), a wrong column count, broken
  JSON or an unusable timestamp makes the whole line malformed (``MalformedLine``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone, tzinfo

from pydantic import ValidationError

from schemas import Sample
from site_node.sources.config import ColumnSpec, check_timestamp_format

__all__ = [
    "CsvLineParser",
    "FileRowParser",
    "JsonLineParser",
    "MalformedLine",
    "TimestampParser",
    "make_sample",
    "parse_number",
    "split_fields",
]

# Spellings of "no reading" that loggers and PLC gateways write besides nan/inf.
_MISSING = frozenset({"", "null", "none", "n/a", "na", "-"})
_MAX_EPOCH_MS = 32_503_680_000_000
_QUALITIES = ("good", "uncertain", "bad")


class MalformedLine(ValueError):
    """A line that is not a reading; the message says why (kept short for logs)."""


def parse_number(token: str) -> float | None:
    """A finite float, or None for a reading marked missing; text raises MalformedLine."""
    text = token.strip()
    try:
        value = float(text)
    except ValueError:
        if text.lower() in _MISSING:
            return None
        raise MalformedLine(f"not a number: {text[:32]!r}") from None
    return value if math.isfinite(value) else None


def split_fields(line: str, delimiter: str) -> list[str]:
    """Fields of a line; a space delimiter means any run of whitespace."""
    if delimiter == " ":
        return line.split()
    return line.split(delimiter)


def _sample(ts: int, name: str, value: float | None, unit: str, q: str = "good") -> Sample:
    try:
        if value is None:
            return Sample(ts=ts, name=name, value=0.0, unit=unit, q="bad")
        return Sample(ts=ts, name=name, value=value, unit=unit, q=q)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise MalformedLine(f"invalid sample {name[:32]!r}: {exc.errors()[0]['msg']}") from None


def make_sample(ts: int, name: str, value: float | None, unit: str) -> Sample:
    """A sample (``value`` None: ``q="bad"``, value 0.0), or MalformedLine."""
    return _sample(ts, name, value, unit)


def _timestamp(value: float | None, unit: str) -> int:
    if value is None:
        raise MalformedLine("missing timestamp")
    ts = int(value * 1000) if unit == "s" else int(value)
    if not 0 <= ts <= _MAX_EPOCH_MS:
        raise MalformedLine(f"timestamp out of range: {value!r}")
    return ts


class CsvLineParser:
    """Positional columns -> samples.

    Args:
        columns: the line's columns, in order.
        delimiter: field separator; ``" "`` means any whitespace.
        exclude: column names parsed (so a broken one is noticed) but not emitted.
        timestamp_column: a column holding the reading's epoch time, else time of receipt.
        timestamp_unit: ``"s"`` or ``"ms"`` for ``timestamp_column``.
        positions: field index of each column when picked by header name; None means the
            line has exactly ``len(columns)`` fields in that order.
    """

    def __init__(
        self,
        columns: Iterable[ColumnSpec],
        delimiter: str = ",",
        exclude: Iterable[str] = (),
        timestamp_column: str | None = None,
        timestamp_unit: str = "ms",
        positions: list[int] | None = None,
    ) -> None:
        self.columns = tuple(columns)
        self.delimiter = delimiter
        self._positions = positions
        self._width = len(self.columns) if positions is None else max(positions) + 1
        excluded = set(exclude)
        self._ts_index = None
        if timestamp_column is not None:
            self._ts_index = [c.name for c in self.columns].index(timestamp_column)
        self._ts_unit = timestamp_unit
        self._emit = [
            i for i, c in enumerate(self.columns) if c.name not in excluded and i != self._ts_index
        ]

    def values(self, line: str) -> list[float | None]:
        """Every column's value (None = marked missing), or MalformedLine."""
        fields = split_fields(line, self.delimiter)
        if self._positions is None:
            if len(fields) != self._width:
                raise MalformedLine(f"{len(fields)} fields, expected {self._width}")
            return [parse_number(f) for f in fields]
        if len(fields) < self._width:
            raise MalformedLine(f"{len(fields)} fields, expected at least {self._width}")
        return [parse_number(fields[p]) for p in self._positions]

    def samples(self, values: list[float | None], now_ms: int) -> list[Sample]:
        """The emitted samples of a parsed line."""
        ts = now_ms if self._ts_index is None else _timestamp(values[self._ts_index], self._ts_unit)
        return [
            _sample(ts, self.columns[i].name, values[i], self.columns[i].unit) for i in self._emit
        ]

    def parse(self, line: str, now_ms: int) -> list[Sample]:
        """Samples of one line, or MalformedLine."""
        return self.samples(self.values(line), now_ms)


class JsonLineParser:
    """JSON lines -> samples.

    Accepts a map of readings ``{"temp": 21.5, "rpm": 1480}`` (units from ``units``), one
    object ``{"name": "temp", "value": 21.5, "unit": "C", "q": "good", "ts": ...}`` or a list
    of such objects. Numbers may be JSON numbers or numeric strings; booleans count as 1/0.
    """

    def __init__(
        self,
        units: dict[str, str],
        exclude: Iterable[str] = (),
        timestamp_field: str | None = None,
        timestamp_unit: str = "ms",
    ) -> None:
        self._units = dict(units)
        self._exclude = frozenset(exclude)
        self._ts_field = timestamp_field
        self._ts_unit = timestamp_unit

    def parse(self, line: str, now_ms: int) -> list[Sample]:
        """Samples of one line, or MalformedLine."""
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MalformedLine(f"invalid JSON: {exc.msg}") from None
        except ValueError as exc:  # e.g. an integer with too many digits
            raise MalformedLine(f"invalid JSON: {str(exc)[:60]}") from None
        if isinstance(doc, list):
            if not doc:
                raise MalformedLine("empty JSON list")
            out = [s for item in doc for s in self._object(item, now_ms)]
        elif isinstance(doc, dict) and "name" in doc and "value" in doc:
            out = self._object(doc, now_ms)
        elif isinstance(doc, dict):
            out = self._readings(doc, now_ms)
        else:
            raise MalformedLine(f"expected a JSON object, got {type(doc).__name__}")
        return out

    def _ts(self, doc: dict[str, object], now_ms: int) -> int:
        key = self._ts_field or "ts"
        if key not in doc:
            if self._ts_field is not None:
                raise MalformedLine(f"missing timestamp field {key!r}")
            return now_ms
        return _timestamp(_number(doc[key]), self._ts_unit)

    def _readings(self, doc: dict[str, object], now_ms: int) -> list[Sample]:
        ts = self._ts(doc, now_ms)
        ts_key = self._ts_field or "ts"
        out = [
            _sample(ts, str(key), _number(raw), self._units.get(str(key), ""))
            for key, raw in doc.items()
            if key != ts_key and key not in self._exclude
        ]
        if not any(key != ts_key for key in doc):
            raise MalformedLine("JSON object holds no readings")
        return out

    def _object(self, item: object, now_ms: int) -> list[Sample]:
        if not isinstance(item, dict) or "name" not in item or "value" not in item:
            raise MalformedLine("expected {name, value} objects")
        name = item["name"]
        if not isinstance(name, str):
            raise MalformedLine("name must be a string")
        if name in self._exclude:
            return []
        unit = item.get("unit", self._units.get(name, ""))
        q = item.get("q", "good")
        if not isinstance(unit, str) or q not in _QUALITIES:
            raise MalformedLine(f"bad unit or quality for {name[:32]!r}")
        return [_sample(self._ts(item, now_ms), name, _number(item["value"]), unit, str(q))]


def _number(raw: object) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, (int, float)):
        try:
            value = float(raw)
        except OverflowError:  # an integer beyond float range
            return None
        return value if math.isfinite(value) else None
    if isinstance(raw, str):
        return parse_number(raw)
    raise MalformedLine(f"not a number: {type(raw).__name__}")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
_EPOCH_FORMATS = {"epoch_s": 1000.0, "epoch_ms": 1.0}


class TimestampParser:
    """A recorded time as text -> epoch ms, or MalformedLine.

    ``fmt``: ``iso`` (ISO 8601: ``2015-01-01 06:00:00``, ``2015-01-01T06:00:00.5+01:00``,
    a trailing ``Z``), ``epoch_s`` / ``epoch_ms`` (numbers, fractions allowed) or a
    strftime pattern (``%d.%m.%Y %H:%M``). A time without an offset is read in ``tz``.
    """

    def __init__(self, fmt: str = "iso", tz: tzinfo = timezone.utc) -> None:
        self.fmt = check_timestamp_format(fmt)
        self.tz = tz

    def __call__(self, text: str) -> int:
        raw = text.strip().strip('"')
        if not raw:
            raise MalformedLine("missing timestamp")
        scale = _EPOCH_FORMATS.get(self.fmt)
        if scale is not None:
            try:
                value = float(raw)
            except ValueError:
                raise MalformedLine(f"timestamp not a number: {raw[:32]!r}") from None
            if not math.isfinite(value):
                raise MalformedLine(f"timestamp out of range: {raw[:32]!r}")
            ts = round(value * scale)
        else:
            try:
                if self.fmt == "iso":
                    # Python 3.11 reads ISO 8601 with a space or T, fractions and Z.
                    when = datetime.fromisoformat(raw)
                else:
                    when = datetime.strptime(raw, self.fmt)
            except ValueError:
                raise MalformedLine(f"timestamp not {self.fmt}: {raw[:32]!r}") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=self.tz)
            ts = (when - _EPOCH) // _ONE_MS  # exact, no float rounding
        if not 0 <= ts <= _MAX_EPOCH_MS:
            raise MalformedLine(f"timestamp out of range: {raw[:32]!r}")
        return ts


_INTEGRAL = re.compile(r"^-?\d+\.0+$")


class FileRowParser:
    """One line of a replayed file -> (numbers, recorded time, device key).

    Only the columns it is told to read are looked at: ``numeric`` columns (emitted or
    filtered on) must be numbers (or a missing-reading marker), the timestamp column must
    be a time in its format, the device column any text; every other column is ignored,
    whatever it holds.

    Args:
        fields: field index of every column to read, by name.
        width: fields a line must have: exactly (``exact``) or at least.
        delimiter: field separator; ``" "`` means any whitespace.
        numeric: names of the columns returned as numbers, in this order.
        timestamp: (column name, parser) of the recorded time, or None.
        device: name of the column whose text names the device, or None.
    """

    def __init__(
        self,
        fields: dict[str, int],
        width: int,
        exact: bool,
        delimiter: str,
        numeric: Sequence[str],
        timestamp: tuple[str, TimestampParser] | None = None,
        device: str | None = None,
    ) -> None:
        self._width, self._exact, self.delimiter = width, exact, delimiter
        self._numeric = [fields[n] for n in numeric]
        self._ts = None if timestamp is None else (fields[timestamp[0]], timestamp[1])
        self._device = None if device is None else fields[device]

    def parse(self, line: str) -> tuple[list[float | None], int | None, str | None]:
        """The numeric columns' values (None = missing), the recorded time in epoch ms
        (None without a timestamp column) and the device key; or MalformedLine."""
        fields = split_fields(line, self.delimiter)
        if self._exact and len(fields) != self._width:
            raise MalformedLine(f"{len(fields)} fields, expected {self._width}")
        if len(fields) < self._width:
            raise MalformedLine(f"{len(fields)} fields, expected at least {self._width}")
        values = [parse_number(fields[i]) for i in self._numeric]
        ts = None if self._ts is None else self._ts[1](fields[self._ts[0]])
        key = None
        if self._device is not None:
            key = fields[self._device].strip().strip('"')
            if _INTEGRAL.match(key):  # 1.0 written by a spreadsheet or pandas: machine 1
                key = key.split(".", 1)[0]
            if not key:
                raise MalformedLine("empty device id")
        return values, ts, key
