"""Rows to samples: reading the site's files, deriving targets, features, windows, splits.

numpy and pandas only (no torch). The table that ``read_table`` returns is what the site
hosts as its private asset: the entity, time, input and target columns the spec names and
nothing else (so columns that leak the label, such as failure modes, never reach it).
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from site_node.training.tasks.declared.spec import DataError, EventsSpec, TaskSpec, _FileFormat

__all__ = [
    "DERIVED_TARGET",
    "DeclaredData",
    "entity_keys",
    "load_dataset",
    "read_table",
    "row_features",
    "sample_window",
    "validation_entities",
]

# The column read_table adds for a target derived from events or the end of each run.
DERIVED_TARGET = "__target__"
_PARAMS = ("entities", "val_fraction")


@dataclass(frozen=True)
class DeclaredData:
    """Samples of one site, split into training and validation.

    ``x``: (n, length, features) windows (raw mode) or (n, aggregated features); ``y``:
    float32 targets (regression, binary) or int64 class indices (multiclass).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    train_entities: tuple[str, ...]
    val_entities: tuple[str, ...]


# -- reading ------------------------------------------------------------------------------


def read_table(spec: TaskSpec, paths: Sequence[str], params: Mapping[str, Any]) -> Any:
    """The site's rows: entity, time (as float: the number, or epoch seconds), the input
    columns and the target (``DERIVED_TARGET`` when derived), inputs concatenated."""
    import pandas as pd

    _check_params(params)
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    if not paths:
        raise DataError("no input files given")
    events_spec = spec.target.events
    event_paths = [p for p in paths if events_spec and _matches(events_spec, p)]
    input_paths = [p for p in paths if p not in event_paths]
    if events_spec is not None and not event_paths:
        raise DataError(
            f"no events file among {[str(p) for p in paths]}: target.events.file "
            f"{events_spec.file!r} matches none of their names"
        )
    if not input_paths:
        raise DataError(f"only events files given ({[str(p) for p in paths]}); no input rows")
    inp = spec.input
    keep = [inp.entity_column, *([inp.time_column] if inp.time_column else [])]
    keep += [c for c in spec.input_columns if c not in keep]
    if spec.target.column:
        keep.append(spec.target.column)
    keep = list(dict.fromkeys(keep))
    frames = []
    for path in input_paths:
        frame = _read_file(path, inp, "input")
        missing = [c for c in keep if c not in frame.columns]
        if missing:
            raise DataError(
                f"{path}: missing columns {missing} (the task reads {keep}); "
                f"the file has {[str(c) for c in frame.columns][:40]}"
            )
        frames.append(frame[keep].copy())
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    table = _select_entities(table, inp.entity_column, params).copy()
    kind = "number"
    if inp.time_column:
        table[inp.time_column], kind = _times(
            table[inp.time_column], inp.time_kind, f"input.time_column {inp.time_column!r}"
        )
    tgt = spec.target
    if tgt.type == "event_within" and (tgt.horizon_unit == "cycles") != (kind == "number"):
        raise DataError(
            f"target.horizon_unit {tgt.horizon_unit!r} does not fit the time column "
            f"{inp.time_column!r}, which holds {'numbers' if kind == 'number' else 'dates'}"
        )
    if tgt.type != "column":
        events = None
        if events_spec is not None:
            events = _read_events(events_spec, event_paths, kind)
        table[DERIVED_TARGET] = _derive_target(spec, table, events)
    return table.reset_index(drop=True)


def _check_params(params: Mapping[str, Any]) -> None:
    unknown = sorted(set(params) - set(_PARAMS))
    if unknown:
        raise DataError(f"unknown dataset params {unknown}; a declared task takes {list(_PARAMS)}")


def _matches(events: EventsSpec, path: str | Path) -> bool:
    return fnmatch.fnmatch(Path(path).name, events.file)


def _read_file(path: str | Path, fmt: _FileFormat, what: str) -> Any:
    import pandas as pd

    try:
        if fmt.format == "parquet":
            try:
                frame = pd.read_parquet(path)
            except ImportError as exc:
                raise DataError(f"{path}: reading Parquet needs pyarrow ({exc})") from None
        else:
            sep = r"\s+" if fmt.format == "whitespace" else fmt.delimiter
            frame = pd.read_csv(
                path,
                sep=sep,
                header=0 if fmt.header else None,
                names=None if fmt.header else fmt.columns,
                index_col=False,
                encoding=fmt.encoding,
            )
    except DataError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what} file: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if fmt.columns and fmt.header:
        missing = [c for c in fmt.columns if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: declared columns {missing} are not in the file")
    return frame


def _select_entities(table: Any, column: str, params: Mapping[str, Any]) -> Any:
    if "entities" not in params:
        return table
    given = params["entities"]
    if not isinstance(given, list | tuple) or not given:
        raise DataError(f"params.entities must be a non-empty list of ids, not {given!r}")
    wanted = set(entity_keys(np.asarray(list(given), dtype=object)).tolist())
    return table[np.isin(entity_keys(table[column]), list(wanted))]


def entity_keys(values: Any) -> np.ndarray:
    """Entity ids as strings, the same at every site (1, 1.0 and "1" are all "1")."""
    arr = np.asarray(values)
    if arr.dtype.kind in "biu":
        return arr.astype(np.int64).astype(str)
    if arr.dtype.kind == "f":
        whole = np.isfinite(arr) & (arr == np.round(arr))
        out = arr.astype(str)
        out[whole] = arr[whole].astype(np.int64).astype(str)
        return out
    return np.array([_key(v) for v in arr], dtype=object).astype(str)


def _key(value: Any) -> str:
    if isinstance(value, float | np.floating) and np.isfinite(value) and value == int(value):
        return str(int(value))
    return str(value)


def _times(series: Any, kind: str, what: str) -> tuple[Any, str]:
    """A time column as float64 (numbers as they are, dates as epoch seconds)."""
    import pandas as pd

    if kind == "number" or (kind == "auto" and series.dtype.kind in "biuf"):
        try:
            return series.astype(np.float64), "number"
        except (TypeError, ValueError) as exc:
            raise DataError(f"{what}: not numbers ({exc})") from None
    try:
        stamps = pd.to_datetime(series, utc=True)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: cannot read as dates: {exc}") from None
    secs = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return secs.astype(np.float64), "datetime"


def _read_events(events: EventsSpec, paths: list[Any], kind: str) -> Any:
    import pandas as pd

    cols = [events.entity_column, events.time_column]
    if events.kind_column:
        cols.append(events.kind_column)
    frames = []
    for path in paths:
        frame = _read_file(path, events, "events")
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: events file misses columns {missing}")
        frames.append(frame[cols])
    table = pd.concat(frames, ignore_index=True)
    table[events.time_column], ev_kind = _times(
        table[events.time_column], kind, f"target.events.time_column {events.time_column!r}"
    )
    if ev_kind != kind:
        raise DataError("the events' times and the input's times must be of one kind")
    if events.kinds:
        assert events.kind_column is not None
        table = table[np.isin(entity_keys(table[events.kind_column]), events.kinds)]
    return table


def _derive_target(spec: TaskSpec, table: Any, events: Any) -> np.ndarray:
    inp, tgt = spec.input, spec.target
    assert inp.time_column is not None
    keys = entity_keys(table[inp.entity_column])
    times = table[inp.time_column].to_numpy(np.float64)
    out = np.full(len(table), np.nan)
    by_entity: dict[str, np.ndarray] = {}
    if events is not None:
        assert tgt.events is not None
        ev_keys = entity_keys(events[tgt.events.entity_column])
        ev_times = events[tgt.events.time_column].to_numpy(np.float64)
        by_entity = {k: np.sort(ev_times[idx]) for k, idx in _groups(ev_keys).items()}
    for key, rows in _groups(keys).items():
        t = times[rows]
        last = np.nanmax(t)
        ev = np.array([last]) if tgt.end_of_run else by_entity.get(str(key), np.zeros(0))
        idx = np.searchsorted(ev, t, side="left")
        has_next = idx < len(ev)
        next_t = np.where(has_next, ev[np.minimum(idx, len(ev) - 1)] if len(ev) else 0, np.inf)
        if tgt.type == "event_within":
            horizon = tgt.horizon_seconds
            assert horizon is not None
            label = (next_t - t <= horizon).astype(np.float64)
            censored = (label == 0) & (t + horizon > last)
            if tgt.censored == "drop":
                label[censored] = np.nan
            out[rows] = label
        else:
            value = next_t - t
            if tgt.cap is not None:
                # No event seen yet, but the entity ran at least ``cap`` more: cap is right.
                value = np.where(~has_next & (last - t >= tgt.cap), tgt.cap, value)
                value = np.where(np.isfinite(value), np.minimum(value, tgt.cap), np.nan)
            out[rows] = np.where(np.isfinite(value), value, np.nan)
    return out


# -- features and targets -----------------------------------------------------------------


def row_features(spec: TaskSpec, table: Any, where: str = "data") -> np.ndarray:
    """(rows, features) float64 in ``spec.feature_names`` order, scaled; NaN stays NaN."""
    feat = spec.features
    missing = [c for c in spec.input_columns if c not in table.columns]
    if missing:
        raise DataError(f"{where}: missing columns {missing}")
    raw: dict[str, np.ndarray] = {}
    for name in spec.input_columns:
        if name in feat.categorical:
            continue
        try:
            raw[name] = np.asarray(table[name], dtype=np.float64)
        except (TypeError, ValueError):
            bad = [v for v in table[name] if not _is_number(v)][:3]
            raise DataError(f"{where}: column {name!r} is not numeric (e.g. {bad})") from None
    for name, expr in spec.expressions.items():
        raw[name] = np.asarray(expr.evaluate(raw), dtype=np.float64) * np.ones(len(table))
    cols = []
    for name in [*spec.numeric_features, *feat.derived]:
        value = raw[name]
        if name in feat.scale:
            center, width = feat.scale[name].affine()
            value = (value - center) / width
        cols.append(value)
    for column, cats in feat.categorical.items():
        keys = entity_keys(table[column])
        unknown = sorted(set(keys.tolist()) - set(cats))
        if unknown:
            raise DataError(
                f"{where}: column {column!r} has values {unknown[:5]} outside its declared "
                f"categories {cats}"
            )
        cols += [(keys == c).astype(np.float64) for c in cats]
    out = np.stack(cols, axis=1) if cols else np.zeros((len(table), 0))
    out[~np.isfinite(out)] = np.nan
    return out


def _groups(keys: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of each entity, in table order."""
    uniq, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
    return dict(zip((str(u) for u in uniq), np.split(order, bounds), strict=True))


def _natural(key: str) -> tuple[int, float, str]:
    """Numeric ids in numeric order, then the others by text."""
    try:
        return 0, float(key), key
    except ValueError:
        return 1, 0.0, key


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def targets(spec: TaskSpec, table: Any) -> np.ndarray:
    """Per-row targets as float64 (class index for multiclass); NaN = no label."""
    tgt = spec.target
    column = tgt.column or DERIVED_TARGET
    if column not in table.columns:
        hint = " (read the files with the task's read_table)" if not tgt.column else ""
        raise DataError(f"the table has no target column {column!r}{hint}")
    values = table[column]
    if tgt.objective == "multiclass":
        keys = entity_keys(values)
        present = np.asarray(values.notna())
        index = {c: i for i, c in enumerate(tgt.classes)}
        unknown = sorted({k for k, p in zip(keys.tolist(), present, strict=True) if p} - set(index))
        if unknown:
            raise DataError(
                f"target column {column!r} has values {unknown[:5]} outside classes {tgt.classes}"
            )
        out = np.array([index.get(k, -1) for k in keys.tolist()], np.float64)
        out[~present] = np.nan
        return out
    try:
        y = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"target column {column!r} is not numeric") from None
    if tgt.objective == "binary":
        bad = sorted(set(y[np.isfinite(y)].tolist()) - {0.0, 1.0})
        if bad:
            raise DataError(f"binary target column {column!r} holds {bad[:5]}; expected 0 or 1")
    return y


# -- windows and split --------------------------------------------------------------------


def _windows(
    spec: TaskSpec, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(index of each window's last row, segment of each window) over ordered segments.

    A segment is a run of consecutive rows of one entity; its windows end at its last row
    and every ``stride`` rows before it, oldest first.
    """
    length, stride = spec.window.length, spec.window.stride
    k = np.where(lengths >= length, (lengths - length) // stride + 1, 0)
    seg = np.repeat(np.arange(len(k)), k)
    j = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)  # 0 = oldest window
    ends = starts[seg] + lengths[seg] - 1 - (k[seg] - 1 - j) * stride
    return ends.astype(np.int64), seg


def _gather(spec: TaskSpec, feats: np.ndarray, ends: np.ndarray) -> np.ndarray:
    if len(ends) == 0:
        return _empty_x(spec)
    length = spec.window.length
    return _shape_samples(spec, feats[ends[:, None] - length + 1 + np.arange(length)])


def _shape_samples(spec: TaskSpec, x: np.ndarray) -> np.ndarray:
    """Raw windows (n, L, f) as they are, or their aggregates (n, A * f)."""
    if spec.window.mode == "raw":
        return x.astype(np.float32)
    parts = []
    for agg in spec.window.aggregates:
        if agg == "last":
            parts.append(x[:, -1, :])
        else:
            parts.append(getattr(np, agg)(x, axis=1))
    return np.concatenate(parts, axis=1).astype(np.float32)


def _empty_x(spec: TaskSpec) -> np.ndarray:
    f = len(spec.feature_names)
    if spec.window.mode == "raw":
        return np.zeros((0, spec.window.length, f), np.float32)
    return np.zeros((0, len(spec.window.aggregates) * f), np.float32)


def validation_entities(keys: Sequence[str], fraction: float, salt: str = "") -> set[str]:
    """Entities whose sha256(salt, id) falls below ``fraction``: the same everywhere."""
    out = set()
    for key in keys:
        digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 < fraction:
            out.add(str(key))
    return out


def load_dataset(spec: TaskSpec, table: Any, params: Mapping[str, Any]) -> DeclaredData:
    """Windows of each entity, split by entity hash or by the end of each timeline."""
    _check_params(params)
    inp = spec.input
    for column in (inp.entity_column, inp.time_column):
        if column and column not in table.columns:
            raise DataError(f"the table has no column {column!r}")
    table = _select_entities(table, inp.entity_column, params)
    fraction = float(params.get("val_fraction", spec.split.fraction))
    if not 0 <= fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), not {fraction}")
    feats = row_features(spec, table)
    y = targets(spec, table)
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any() and inp.missing == "error":
        names = spec.feature_names
        cols = sorted({names[j] for j in np.flatnonzero(~np.isfinite(feats[bad]).all(axis=0))})
        raise DataError(
            f"{int(bad.sum())} rows have missing or non-finite values in {cols} "
            '(set input.missing = "drop" to skip them)'
        )
    keys = entity_keys(table[inp.entity_column])
    times = table[inp.time_column].to_numpy(np.float64) if inp.time_column else np.zeros(len(keys))
    uniq, inverse = np.unique(keys, return_inverse=True)
    natural = sorted(range(len(uniq)), key=lambda i: _natural(str(uniq[i])))
    rank = np.empty(len(uniq), np.int64)
    rank[natural] = np.arange(len(uniq))
    names = [str(uniq[i]) for i in natural]  # entities in natural order
    row_rank = rank[inverse]
    good = np.flatnonzero(~bad)
    # Rows by entity, then time (ties keep the table's order).
    perm = good[np.lexsort((times[good], row_rank[good]))]
    f, t, tm = feats[perm], y[perm], times[perm]
    counts = np.bincount(row_rank[perm], minlength=len(uniq))
    first = np.cumsum(counts) - counts
    horizon = spec.target.horizon_seconds
    if spec.split.by == "entity":
        val_set = validation_entities(names, fraction, spec.split.salt)
        sides = np.array([n in val_set for n in names], bool)
        starts, lengths = first, counts
        limits = np.full(len(names), np.inf)
        train_ents = [n for n, v in zip(names, sides, strict=True) if not v]
        val_ents = [n for n, v in zip(names, sides, strict=True) if v]
    else:
        n_val = np.array([round(c * fraction) for c in counts], np.int64)
        cut = counts - n_val
        starts = np.concatenate([first, first + cut])
        lengths = np.concatenate([cut, n_val])
        sides = np.concatenate([np.zeros(len(names), bool), np.ones(len(names), bool)])
        # Purge: a training label that looks past the cut would leak validation events.
        cut_time = np.full(len(names), np.inf)
        has_val = n_val > 0
        if horizon is not None:
            cut_time[has_val] = tm[(first + cut)[has_val]]
        limits = np.concatenate([cut_time, np.full(len(names), np.inf)])
        train_ents = list(names)
        val_ents = [n for n, v in zip(names, has_val, strict=True) if v]
    ends, seg = _windows(spec, starts, lengths)
    keep = np.isfinite(t[ends])
    if horizon is not None:
        keep &= tm[ends] + horizon < limits[seg]
    ends, seg = ends[keep], seg[keep]
    ydt = np.int64 if spec.target.objective == "multiclass" else np.float32
    tr, va = ends[~sides[seg]], ends[sides[seg]]
    return DeclaredData(
        _gather(spec, f, tr),
        t[tr].astype(ydt),
        _gather(spec, f, va),
        t[va].astype(ydt),
        tuple(train_ents),
        tuple(val_ents),
    )


# -- live windows -------------------------------------------------------------------------


def sample_window(
    spec: TaskSpec, window: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
) -> np.ndarray:
    """One model input (batch of 1) from a device's live samples, oldest first.

    Each sample maps sensor names (``[predict] sensors``, default the column names) to
    values; a categorical column may come from ``params`` (a fixed attribute of the
    device, e.g. {"Type": "L"}) instead. Raises ValueError when too short or incomplete.
    """
    import pandas as pd

    length = spec.window.length
    if len(window) < length:
        raise ValueError(f"the task needs {length} samples, got {len(window)}")
    recent = list(window)[-length:]
    sensors = spec.predict.sensors
    rows: dict[str, list[Any]] = {}
    for column in spec.input_columns:
        sensor = sensors.get(column, column)
        if all(sensor in s for s in recent):
            rows[column] = [s[sensor] for s in recent]
        elif column in params:
            rows[column] = [params[column]] * length
        else:
            absent = sum(sensor not in s for s in recent)
            raise ValueError(
                f"sensor {sensor!r} (column {column!r}) is missing from {absent} of "
                f"{length} samples"
            )
    feats = row_features(spec, pd.DataFrame(rows), "window")
    if not np.isfinite(feats).all():
        raise ValueError("the window holds missing or non-finite values")
    x = feats[None, :, :]
    return _shape_samples(spec, x)
