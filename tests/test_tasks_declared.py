"""Declared (no-code) tasks: spec validation, target derivation, windows, leak-free splits,
the model families, metrics with reasons, predict on live samples, and the two shipped
declarations against the hand-written built-ins. Tiny data, except the built-in checks."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from site_node.training.tasks.declared import (
    EXAMPLES_DIR,
    DataError,
    DeclaredTask,
    SpecError,
)
from tests.helpers.data import AI4I_CSV, TRAIN_FD001
from tests.helpers.site_proc import SITE_BIN

# -- helpers --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Any:
    """Tiny models train fastest on one thread; torch's pool spin-waits on a loaded machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def to_toml(doc: dict[str, Any], prefix: str = "") -> str:
    """A tiny TOML writer: nested dicts become tables, dicts inside tables inline."""
    lines, tables = [], []
    for key, value in doc.items():
        if isinstance(value, dict) and (not prefix or key in _TABLES):
            tables.append((key, value))
        else:
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
    out = ([f"[{prefix}]"] if prefix and lines else []) + lines
    for key, value in tables:
        out.append(to_toml(value, f"{prefix}.{key}" if prefix else key))
    return "\n".join(out) + "\n"


_TABLES = {"events", "derived", "scale"}

# A machine's telemetry every cycle, failures in an event log: "fail within 2 cycles".
BASE: dict[str, Any] = {
    "task": {"name": "pump-failure", "version": "0.1"},
    "input": {"entity_column": "machine", "time_column": "t", "time_kind": "number"},
    "features": {
        "columns": ["a", "b"],
        "scale": {"a": {"min": 0, "max": 10}, "b": {"mean": 0.0, "std": 2.0}},
    },
    "target": {
        "type": "event_within",
        "objective": "binary",
        "horizon": 2,
        "events": {
            "file": "events*.csv",
            "entity_column": "machine",
            "time_column": "t",
            "kind_column": "kind",
            "kinds": ["fail"],
        },
        "output": "p_fail",
    },
    "window": {"length": 3},
    "model": {"family": "mlp", "hidden": [8]},
    "split": {"by": "time", "fraction": 0.25},
    "defaults": {"epochs": 1, "batch_size": 8},
}


def spec(doc: dict[str, Any] | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` (default BASE) with whole sections replaced or added."""
    out = copy.deepcopy(doc or BASE)
    out.update(copy.deepcopy(sections))
    return out


def write_task(tmp_path: Path, doc: dict[str, Any], name: str = "task.toml") -> Path:
    path = tmp_path / name
    path.write_text(to_toml(doc))
    return path


def task_of(tmp_path: Path, doc: dict[str, Any]) -> DeclaredTask:
    return DeclaredTask.from_toml(write_task(tmp_path, doc))


def write_pump_data(tmp_path: Path, machines: int = 2, cycles: int = 20) -> list[str]:
    rows = ["machine,t,a,b"]
    for m in range(1, machines + 1):
        for t in range(cycles):
            rows.append(f"m{m},{t},{(t * m) % 10},{np.sin(t + m):.4f}")
    telemetry = tmp_path / "telemetry.csv"
    telemetry.write_text("\n".join(rows) + "\n")
    events = tmp_path / "events_2024.csv"
    events.write_text("machine,t,kind\nm1,5,fail\nm1,8,inspect\nm1,15,fail\nm2,30,fail\n")
    return [str(telemetry), str(events)]


def spec_error(tmp_path: Path, doc: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        task_of(tmp_path, doc)
    return str(info.value)


# -- spec validation ---------------------------------------------------------------------------


def test_unknown_keys_are_refused_with_their_path_and_the_file(tmp_path: Path) -> None:
    doc = spec(model={"family": "mlp", "hidden": [8], "hiden": [4]})
    msg = spec_error(tmp_path, doc)
    assert str(tmp_path / "task.toml") in msg
    assert "model.hiden: unknown key" in msg
    assert "unknown key" in spec_error(tmp_path, spec(training={"epochs": 2}))


@pytest.mark.parametrize(
    ("section", "value", "expect"),
    [
        ("model", {"family": "mlp"}, "needs hidden"),
        ("model", {"family": "cnn1d", "channels": [4], "kernels": [4]}, "must be odd"),
        ("model", {"family": "linear", "hidden": [3]}, "no hidden layers"),
        ("window", {"length": 3, "mode": "aggregate"}, "needs aggregates"),
        ("split", {"by": "time", "fraction": 1.0}, "split.fraction"),
        ("metrics", {"report": ["rmse"]}, "not available for binary"),
        ("metrics", {"primary": "mae"}, "metrics.primary 'mae'"),
        ("defaults", {"epochs": 2, "lr_schedule": 1}, "unknown hyperparameters ['lr_schedule']"),
        ("predict", {"sensors": {"zzz": "x"}}, "does not read: ['zzz']"),
    ],
)
def test_invalid_sections_say_what_is_wrong(
    tmp_path: Path, section: str, value: dict[str, Any], expect: str
) -> None:
    assert expect in spec_error(tmp_path, spec(**{section: value}))


def test_target_rules(tmp_path: Path) -> None:
    no_horizon = spec()
    del no_horizon["target"]["horizon"]
    assert "needs [target.events] and horizon" in spec_error(tmp_path, no_horizon)
    regression = spec()
    regression["target"]["objective"] = "regression"
    assert 'event_within" is a binary objective' in spec_error(tmp_path, regression)
    multi = spec(target={"column": "state", "objective": "multiclass", "classes": ["ok"]})
    assert "at least two" in spec_error(tmp_path, multi)
    weights = spec(
        target={
            "column": "state",
            "objective": "multiclass",
            "classes": ["ok", "worn"],
            "class_weight": [1.0],
        }
    )
    assert "1 weights for 2 classes" in spec_error(tmp_path, weights)
    both = spec(target={"type": "time_to_event", "objective": "regression"})
    assert "either [target.events] or end_of_run" in spec_error(tmp_path, both)


def test_scaling_must_be_declared_for_every_numeric_feature(tmp_path: Path) -> None:
    doc = spec()
    doc["features"]["scale"] = {"a": {"min": 0, "max": 10}}
    msg = spec_error(tmp_path, doc)
    assert "features.scale misses ['b']" in msg and "sites must share one scaling" in msg
    doc["features"]["scale"] = {"a": {"min": 3, "max": 1}, "b": {"mean": 0, "std": 1}}
    assert "features.scale.a: max (1.0) must be above min (3.0)" in spec_error(tmp_path, doc)
    doc["features"]["scale"] = {"a": {"min": 0, "std": 1}, "b": {"mean": 0, "std": 1}}
    assert "either {min, max} or {mean, std}" in spec_error(tmp_path, doc)
    doc["features"]["scale"] = {"a": {"min": 0, "max": 1}, "c": {"min": 0, "max": 1}}
    doc["features"]["require_scale"] = False
    assert "features.scale.c: not a numeric feature" in spec_error(tmp_path, doc)


def test_feature_columns_are_checked_against_the_declared_file_columns(tmp_path: Path) -> None:
    doc = spec()
    doc["input"]["columns"] = ["machine", "t", "a"]
    assert "not among" not in spec_error(tmp_path, doc)
    assert "features name columns not in input.columns: ['b']" in spec_error(tmp_path, doc)
    doc["input"]["header"] = False
    doc["input"].pop("columns")
    assert "header = false needs columns" in spec_error(tmp_path, doc)
    every = spec()
    every["features"]["columns"] = "all"
    assert "needs input.columns" in spec_error(tmp_path, every)


def test_derived_expressions_cannot_run_code(tmp_path: Path) -> None:
    for source, expect in [
        ("__import__('os').system('true')", "not allowed"),
        ("a.real", "Attribute is not allowed"),
        ("a[0]", "Subscript is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("sqrt(a, b)", "minimum and maximum take two arguments"),
        ("a // 2", "FloorDiv is not allowed"),
        ("'x' + a", "only numbers"),
        ("a +", "not an expression"),
    ]:
        doc = spec()
        doc["features"]["derived"] = {"bad": source}
        assert expect in spec_error(tmp_path, doc), source


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[task\nname = 1\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        DeclaredTask.from_toml(path)
    with pytest.raises(SpecError, match="cannot read"):
        DeclaredTask.from_toml(tmp_path / "absent.toml")


def test_the_contract_attributes(tmp_path: Path) -> None:
    task = task_of(tmp_path, BASE)
    assert (task.NAME, task.VERSION, task.WINDOW) == ("pump-failure", "0.1", 3)
    assert task.OUTPUTS == {"p_fail": ""}
    assert task.METRICS == {
        "loss": "min",
        "roc_auc": "max",
        "pr_auc": "max",
        "f1": "max",
        "precision": "max",
        "recall": "max",
    }
    assert task.PRIMARY_METRIC == "roc_auc"
    assert task.DEFAULTS["epochs"] == 1 and task.DEFAULTS["lr"] == 1e-3
    assert task.files[0] == (tmp_path / "task.toml").resolve()
    names = {p.name for p in task.files}
    assert {"spec.py", "frames.py", "task.py", "models.py", "common.py"} <= names


def test_building_a_task_imports_no_torch_pandas_or_numpy() -> None:
    code = (
        "import sys; from site_node.training.tasks.declared import DeclaredTask, EXAMPLES_DIR; "
        "[DeclaredTask.from_toml(p) for p in EXAMPLES_DIR.glob('*.toml')]; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pandas', 'numpy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_base_defaults_are_the_training_loops() -> None:
    from site_node.training.tasks.common import BASE_DEFAULTS
    from site_node.training.tasks.declared.spec import base_defaults

    assert base_defaults() == BASE_DEFAULTS


# -- reading and targets -----------------------------------------------------------------------


def _target_of(table: Any, machine: str) -> np.ndarray:
    rows = table[table["machine"] == machine].sort_values("t")
    return np.asarray(rows["__target__"].to_numpy(), np.float64)


def test_event_within_labels_and_censoring(tmp_path: Path) -> None:
    paths = write_pump_data(tmp_path)
    table = task_of(tmp_path, BASE).read_table(paths)
    # Only the declared columns reach the hosted table.
    assert list(table.columns) == ["machine", "t", "a", "b", "__target__"]
    m1 = _target_of(table, "m1")
    # "fail" at 5 and 15 ("inspect" at 8 is not a kind asked for): positive from 2 before.
    assert [int(m1[t]) for t in range(18)] == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    # The last 2 cycles could still see a failure after the log ends: unknown, dropped.
    assert np.isnan(m1[18:]).all()
    m2 = _target_of(table, "m2")
    assert (m2[:18] == 0).all() and np.isnan(m2[18:]).all()
    doc = spec()
    doc["target"]["censored"] = "negative"
    (tmp_path / "n").mkdir()
    negative = task_of(tmp_path / "n", doc).read_table(paths)
    assert negative["__target__"].notna().all()


def test_time_to_event_with_events_and_cap(tmp_path: Path) -> None:
    paths = write_pump_data(tmp_path)
    doc = spec(
        target={
            "type": "time_to_event",
            "objective": "regression",
            "cap": 4,
            "events": {**BASE["target"]["events"]},
            "output": "ttf",
            "unit": "cycles",
        }
    )
    task = task_of(tmp_path, doc)
    assert task.OUTPUTS == {"ttf": "cycles"}
    table = task.read_table(paths)
    m1 = _target_of(table, "m1")
    assert list(m1[:16]) == [4, 4, 3, 2, 1, 0, 4, 4, 4, 4, 4, 4, 3, 2, 1, 0]
    # After the last failure, too little is observed to know the time to the next one.
    assert np.isnan(m1[16:]).all()
    # m2 fails at 30, after its telemetry ends at 19: known from the log, capped.
    assert (_target_of(table, "m2") == 4).all()


def test_end_of_run_remaining_life(tmp_path: Path) -> None:
    paths = write_pump_data(tmp_path)[:1]
    doc = spec(
        target={
            "type": "time_to_event",
            "objective": "regression",
            "end_of_run": True,
            "cap": 10,
        },
    )
    table = task_of(tmp_path, doc).read_table(paths)
    m1 = table[table["machine"] == "m1"]["__target__"].to_numpy()
    np.testing.assert_array_equal(m1, np.minimum(np.arange(19, -1, -1), 10))


def test_datetime_times_and_hour_horizons(tmp_path: Path) -> None:
    (tmp_path / "tele.csv").write_text(
        "id,ts,v\n" + "".join(f"p1,2024-03-01T{h:02d}:00:00Z,{h}\n" for h in range(12))
    )
    (tmp_path / "failures.csv").write_text("id,when\np1,2024-03-01 06:30:00+00:00\n")
    doc = spec(
        input={"entity_column": "id", "time_column": "ts"},
        features={"columns": ["v"], "scale": {"v": {"min": 0, "max": 12}}},
        target={
            "type": "event_within",
            "objective": "binary",
            "horizon": 2,
            "horizon_unit": "hours",
            "events": {"file": "failures.csv", "entity_column": "id", "time_column": "when"},
        },
    )
    task = task_of(tmp_path, doc)
    table = task.read_table([str(tmp_path / "tele.csv"), str(tmp_path / "failures.csv")])
    assert list(table["__target__"][:10]) == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert table["__target__"][10:].isna().all()
    doc["target"]["horizon_unit"] = "cycles"
    (tmp_path / "c").mkdir()
    bad = task_of(tmp_path / "c", doc)
    with pytest.raises(DataError, match="holds dates"):
        bad.read_table([str(tmp_path / "tele.csv"), str(tmp_path / "failures.csv")])


def test_data_errors_name_files_and_columns(tmp_path: Path) -> None:
    paths = write_pump_data(tmp_path)
    task = task_of(tmp_path, BASE)
    with pytest.raises(DataError, match="no events file among"):
        task.read_table(paths[:1])
    (tmp_path / "other.csv").write_text("machine,t,a\nm1,0,1\n")
    with pytest.raises(DataError, match=r"other.csv: missing columns \['b'\]"):
        task.read_table([str(tmp_path / "other.csv"), paths[1]])
    with pytest.raises(DataError, match="unknown dataset params"):
        task.read_table(paths, {"units": [1]})
    with pytest.raises(DataError, match=r"params\.entities must be a non-empty list"):
        task.read_table(paths, {"entities": "m1"})
    (tmp_path / "nan.csv").write_text("machine,t,a,b\nm1,0,1,\nm1,1,2,0.5\nm1,2,x,1\n")
    with pytest.raises(DataError, match=r"column 'a' is not numeric \(e.g. \['x'\]\)"):
        task.load_dataset([str(tmp_path / "nan.csv"), paths[1]])


def test_missing_values_error_or_drop(tmp_path: Path) -> None:
    paths = write_pump_data(tmp_path)
    text = Path(paths[0]).read_text().replace("m1,4,4,", "m1,4,,")
    Path(paths[0]).write_text(text)
    with pytest.raises(DataError, match=r"1 rows have missing or non-finite values in \['a'\]"):
        task_of(tmp_path, BASE).load_dataset(paths)
    doc = spec()
    doc["input"]["missing"] = "drop"
    data = task_of(tmp_path, doc).load_dataset(paths)
    assert len(data.x_train) > 0


def test_parquet_input(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import pandas as pd

    paths = write_pump_data(tmp_path)
    pd.read_csv(paths[0]).to_parquet(tmp_path / "telemetry.parquet")
    doc = spec()
    doc["input"]["format"] = "parquet"
    task = task_of(tmp_path, doc)
    from_parquet = task.read_table([str(tmp_path / "telemetry.parquet"), paths[1]])
    doc["input"]["format"] = "csv"
    (tmp_path / "c").mkdir()
    from_csv = task_of(tmp_path / "c", doc).read_table(paths)
    pd.testing.assert_frame_equal(from_parquet, from_csv)


# -- windows -----------------------------------------------------------------------------------


def _tabular(tmp_path: Path, rows: int = 12, **window: Any) -> tuple[DeclaredTask, Any]:
    import pandas as pd

    doc = spec(
        target={"column": "y", "objective": "regression"},
        window={"length": 4, **window},
        split={"by": "entity", "fraction": 0.0},
    )
    doc["features"]["scale"] = {"a": {"min": 0, "max": 1}, "b": {"mean": 0, "std": 1}}
    task = task_of(tmp_path, doc)
    table = pd.DataFrame(
        {
            "machine": ["m1"] * rows + ["m2"] * 3,
            "t": [*range(rows), *range(3)],
            "a": [float(i) for i in range(rows)] + [0.0] * 3,
            "b": [float(i * i) for i in range(rows)] + [0.0] * 3,
            "y": [float(10 * i) for i in range(rows)] + [1.0] * 3,
        }
    ).sample(frac=1.0, random_state=1)  # row order must not matter: sorted by time
    return task, table


def test_raw_windows_stride_from_the_latest_row(tmp_path: Path) -> None:
    task, table = _tabular(tmp_path, stride=3)
    data = task.load_dataset(table)
    # m1: 12 rows, windows of 4 ending at rows 11, 8, 5 (the latest always included);
    # m2 is shorter than the window and gives none.
    assert data.x_train.shape == (3, 4, 2)
    assert list(data.y_train) == [50.0, 80.0, 110.0]
    np.testing.assert_array_equal(data.x_train[2, :, 0], [8, 9, 10, 11])
    np.testing.assert_array_equal(data.x_train[0, :, 1], [4, 9, 16, 25])
    assert data.train_entities == ("m1", "m2")


def test_aggregated_windows(tmp_path: Path) -> None:
    task, table = _tabular(
        tmp_path, mode="aggregate", aggregates=["mean", "min", "max", "std", "last"]
    )
    data = task.load_dataset(table)
    assert data.x_train.shape == (9, 10)
    last = np.array([8, 9, 10, 11], np.float64)
    b = last**2
    np.testing.assert_allclose(
        data.x_train[-1],
        [last.mean(), b.mean(), 8, 64, 11, 121, last.std(), b.std(), 11, 121],
        rtol=1e-6,
    )


# -- splits ------------------------------------------------------------------------------------


def _many_machines(tmp_path: Path, machines: int = 30, cycles: int = 16) -> list[str]:
    return write_pump_data(tmp_path, machines=machines, cycles=cycles)


def test_entity_split_never_shares_an_entity_and_is_the_same_at_every_site(
    tmp_path: Path,
) -> None:
    paths = _many_machines(tmp_path)
    doc = spec(split={"by": "entity", "fraction": 0.3})
    task = task_of(tmp_path, doc)
    table = task.read_table(paths)
    data = task.load_dataset(table)
    assert not set(data.train_entities) & set(data.val_entities)
    assert 3 <= len(data.val_entities) <= 17
    assert len(data.x_val) > 0
    # A site holding only some of the machines puts each in the same split.
    some = [f"m{i}" for i in range(1, 31, 3)]
    part = task.load_dataset(table, {"entities": some})
    assert set(part.val_entities) == set(data.val_entities) & set(some)
    assert set(part.train_entities) == set(data.train_entities) & set(some)
    # Another salt, another split; the same salt, the same one.
    salted = spec(split={"by": "entity", "fraction": 0.3, "salt": "plant-2"})
    (tmp_path / "s").mkdir()
    other = task_of(tmp_path / "s", salted).load_dataset(table)
    assert set(other.val_entities) != set(data.val_entities)


def test_time_split_keeps_validation_after_training_and_purges_the_horizon(
    tmp_path: Path,
) -> None:
    paths = _many_machines(tmp_path, machines=3, cycles=24)
    table = task_of(tmp_path, BASE).read_table(paths)
    # A feature that is each row's time shows which rows each sample holds.
    doc = spec()
    doc["features"] = {"columns": [], "derived": {"time": "t"}}
    (tmp_path / "t").mkdir()
    probe = task_of(tmp_path / "t", doc)
    data = probe.load_dataset(table)
    assert data.train_entities == data.val_entities == ("m1", "m2", "m3")
    # 24 cycles: the last 6 (25%) validate; their last 2 have no label (censored).
    train_t = data.x_train[:, :, 0]
    val_t = data.x_val[:, :, 0]
    assert len(data.x_val) == 3 * 2 and val_t.min() == 18 and val_t.max() == 21
    # No training window holds a validation row, nor does its 2-cycle horizon reach one.
    assert train_t.max() == 15 and len(data.x_train) == 3 * 14


# -- training, model families, metrics ---------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ({"family": "linear"}, {"length": 3}),
        ({"family": "mlp", "hidden": [6, 4], "dropout": 0.1}, {"length": 3}),
        (
            {"family": "mlp", "hidden": [6]},
            {"length": 3, "mode": "aggregate", "aggregates": ["mean", "last"]},
        ),
        (
            {"family": "cnn1d", "channels": [4, 4], "kernels": [3, 1], "hidden": [5]},
            {"length": 3},
        ),
        ({"family": "gru", "gru_hidden": 5, "gru_layers": 2}, {"length": 3}),
    ],
)
def test_every_model_family_trains_a_step(
    tmp_path: Path, model: dict[str, Any], window: dict[str, Any]
) -> None:
    paths = _many_machines(tmp_path, machines=6)
    doc = spec(model=model, window=window, split={"by": "entity", "fraction": 0.5})
    doc["target"]["class_weight"] = "balanced"
    task = task_of(tmp_path, doc)
    data = task.load_dataset(paths)
    start = task.initial_weights(3)
    assert start == task.initial_weights(3) and start != task.initial_weights(4)
    weights, n, metrics = task.train(start, data, {"epochs": 1, "lr": 0.01})
    assert n == len(data.x_train) > 0
    assert weights != start
    assert metrics["train_loss"] > 0 and set(metrics) <= {"train_loss", *task.METRICS}
    scores = task.evaluate(weights, data)
    assert set(scores) == set(task.METRICS)
    assert {k: v for k, v in scores.items() if isinstance(v, float)} == pytest.approx(
        {k: v for k, v in metrics.items() if k != "train_loss"}
    )
    # FedProx from the shared loop works too.
    task.train(weights, data, {"strategy": "fedprox", "mu": 0.1})


def test_multiclass_from_a_column(tmp_path: Path) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 10, 300)
    table = pd.DataFrame(
        {
            "machine": [f"m{i % 40}" for i in range(300)],
            "t": np.arange(300),
            "a": a,
            "b": rng.normal(size=300),
            "state": np.where(a < 3, "ok", np.where(a < 7, "worn", "broken")),
        }
    )
    doc = spec(
        target={
            "column": "state",
            "objective": "multiclass",
            "classes": ["ok", "worn", "broken"],
            "class_weight": "balanced",
        },
        window={"length": 1},
        split={"by": "entity", "fraction": 0.3},
        metrics={"report": ["accuracy", "f1", "roc_auc"]},
    )
    task = task_of(tmp_path, doc)
    assert task.OUTPUTS == {"p_ok": "", "p_worn": "", "p_broken": ""}
    data = task.load_dataset(table)
    assert data.y_train.dtype == np.int64
    weights, _, _ = task.train(None, data, {"epochs": 40, "lr": 0.05, "batch_size": 64})
    scores = task.evaluate(weights, data)
    assert isinstance(scores["accuracy"], float) and scores["accuracy"] > 0.8
    out = task.predict(weights, [{"a": 9.5, "b": 0.0}])
    assert max(out, key=out.__getitem__) == "p_broken"
    assert sum(out.values()) == pytest.approx(1.0)
    bad = table.assign(state=["ok"] * 299 + ["melted"])
    with pytest.raises(DataError, match=r"values \['melted'\] outside classes"):
        task.load_dataset(bad)


def test_a_metric_that_cannot_be_computed_is_a_reason(tmp_path: Path) -> None:
    import pandas as pd

    table = pd.DataFrame(
        {
            "machine": [f"m{i}" for i in range(60)],
            "t": 0,
            "a": np.linspace(0, 9, 60),
            "b": 0.0,
            "y": [1.0] * 10 + [0.0] * 50,
        },
    )
    doc = spec(
        target={"column": "y", "objective": "binary"},
        window={"length": 1},
        split={"by": "entity", "fraction": 0.5},
    )
    task = task_of(tmp_path, doc)
    data = task.load_dataset(table)
    weights, _, metrics = task.train(None, data, {})
    val_y = np.asarray(data.y_val)
    only_negatives = task.evaluate(weights, replace_val(data, val_y * 0))
    assert only_negatives["roc_auc"] == (
        f"one class only in the validation split (0 positives of {len(val_y)})"
    )
    assert only_negatives["pr_auc"].startswith("no positives")  # type: ignore[union-attr]
    assert only_negatives["recall"].startswith("no positives")  # type: ignore[union-attr]
    assert isinstance(only_negatives["loss"], float)
    # train reports only the numbers (the wire carries floats); evaluate says why.
    assert all(isinstance(v, float) for v in metrics.values())
    empty = task.load_dataset(table, {"val_fraction": 0.0})
    assert task.evaluate(weights, empty) == {
        k: "validation split is empty (0 samples)" for k in task.METRICS
    }


def replace_val(data: Any, y: np.ndarray) -> Any:
    from dataclasses import replace

    return replace(data, y_val=y.astype(np.float32))


def test_metric_values() -> None:
    from site_node.training.tasks.declared.metrics import binary_metrics, pr_auc, roc_auc

    y = np.array([0, 0, 1, 1, 0, 1], np.float64)
    s = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert roc_auc(y, s) == 1.0 and roc_auc(y, -s) == 0.0 and roc_auc(y, np.ones(6)) == 0.5
    assert pr_auc(y, s) == 1.0
    # Ranked: 1 (p=1), 0, 1 (p=2/3): AP = (1 + 2/3) / 2.
    assert pr_auc(np.array([1.0, 0, 1]), np.array([0.9, 0.8, 0.7])) == pytest.approx(5 / 6)
    m = binary_metrics(s, y, ["precision", "recall", "f1", "accuracy"], threshold=0.75)
    assert m == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "accuracy": 5 / 6})


# -- predict -----------------------------------------------------------------------------------


def test_predict_on_a_window_of_live_samples(tmp_path: Path) -> None:
    paths = _many_machines(tmp_path, machines=4)
    doc = spec(predict={"sensors": {"a": "pressure_bar"}})
    task = task_of(tmp_path, doc)
    table = task.read_table(paths).rename(columns={})
    data = task.load_dataset(table)
    weights, _, _ = task.train(None, data, {})
    samples = [{"pressure_bar": 1.0 + i, "b": 0.5 * i, "other": 7.0} for i in range(5)]
    out = task.predict(weights, samples)
    assert set(out) == set(task.OUTPUTS) and 0.0 <= out["p_fail"] <= 1.0
    # The same as the model's output on the last 3 samples built as training data.
    import pandas as pd

    from site_node.training.tasks.common import predict as model_out
    from site_node.training.tasks.declared.frames import row_features

    rows = pd.DataFrame({"a": [3.0, 4.0, 5.0], "b": [1.0, 1.5, 2.0]})
    x = row_features(task.spec, rows)[None].astype(np.float32)
    logit = model_out(task._model(weights), x)[0]
    assert out["p_fail"] == pytest.approx(1 / (1 + np.exp(-logit)))
    with pytest.raises(ValueError, match="needs 3 samples, got 2"):
        task.predict(weights, samples[:2])
    with pytest.raises(ValueError, match="sensor 'pressure_bar' \\(column 'a'\\) is missing"):
        task.predict(weights, [{"a": 1.0, "b": 1.0}] * 3)
    with pytest.raises(ValueError, match="non-finite"):
        task.predict(weights, [{"pressure_bar": float("nan"), "b": 1.0}] * 3)


# -- the shipped declarations against the built-ins ------------------------------------------


def test_the_examples_are_builtin_tasks_of_the_registry() -> None:
    from site_node.training.tasks.registry import contract_problems, scan

    catalog = scan()
    for path in sorted(EXAMPLES_DIR.glob("*.toml")):
        name = DeclaredTask.from_toml(path).NAME
        task = catalog.tasks[name]
        assert (task.kind, task.source) == ("declared", "builtin")
        assert contract_problems(task) == []


def test_ai4i_declaration_reads_only_its_columns_and_builds_the_builtins_features() -> None:
    from site_node.training.tasks import ai4i_failure

    task = DeclaredTask.from_toml(EXAMPLES_DIR / "ai4i2020.toml")
    table = task.read_table([str(AI4I_CSV)])
    assert not {"TWF", "HDF", "PWF", "OSF", "RNF", "UDI"} & set(table.columns)
    from site_node.training.tasks.declared.frames import row_features

    mine = row_features(task.spec, table)
    theirs = ai4i_failure.features(ai4i_failure.read_table([str(AI4I_CSV)], {}))
    order = [
        task.spec.feature_names.index(n)
        for n in [
            "Type=L",
            "Type=M",
            "Type=H",
            *task.spec.numeric_features,
            "power",
            "temp_diff",
            "strain",
        ]
    ]
    np.testing.assert_allclose(mine[:, order], theirs, atol=1e-6)
    data = task.load_dataset(table)
    # Split by product: about 20% of the 10,000 products validate, none in both halves.
    assert 1800 < len(data.x_val) < 2200
    assert not set(data.train_entities) & set(data.val_entities)
    out = task.predict(
        task.initial_weights(0),
        [
            {
                "Air temperature [K]": 298.1,
                "Process temperature [K]": 308.6,
                "Rotational speed [rpm]": 1551.0,
                "Torque [Nm]": 42.8,
                "Tool wear [min]": 0.0,
            }
        ],
        {"Type": "M"},
    )
    assert set(out) == {"p_fail"}


def test_fd001_declaration_builds_the_builtins_windows_model_and_init() -> None:
    from site_node.training.tasks import cmapss_rul
    from site_node.training.weights_io import load_npz

    task = DeclaredTask.from_toml(EXAMPLES_DIR / "cmapss_fd001.toml")
    units = [1, 2, 3, 10]
    data = task.load_dataset([str(TRAIN_FD001)], {"entities": units, "val_fraction": 0})
    # Ids as the site's TOML may write them: 1, 1.0 and "1" are the same engine.
    same = task.load_dataset([str(TRAIN_FD001)], {"entities": [1.0, "2", 3, 10.0]})
    assert sorted(same.train_entities + same.val_entities, key=int) == ["1", "2", "3", "10"]
    b_table = cmapss_rul.read_table(str(TRAIN_FD001), {"units": units})
    bx, by, _ = cmapss_rul.windows(b_table)
    np.testing.assert_array_equal(data.x_train, bx)
    np.testing.assert_array_equal(data.y_train, by)
    # The same layers created in the same order: the same initial weights, array by array.
    mine = list(load_npz(task.initial_weights(5)).values())
    theirs = list(load_npz(cmapss_rul.initial_weights(5)).values())
    assert [a.shape for a in mine] == [a.shape for a in theirs]
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    # And a training job gives the same weights, bit for bit (same batches, same loss).
    small = {"epochs": 1, "batch_size": 256}
    w_mine, _, _ = task.train(task.initial_weights(0), data, small)
    w_theirs, _, _ = cmapss_rul.train(
        cmapss_rul.initial_weights(0),
        cmapss_rul.CmapssData(bx, by, bx[:0], by[:0], tuple(units), ()),
        small,
    )
    for a, b in zip(load_npz(w_mine).values(), load_npz(w_theirs).values(), strict=True):
        np.testing.assert_array_equal(a, b)
    window = [
        dict(zip(task.spec.input.columns, map(float, row), strict=True))
        for row in np.loadtxt(TRAIN_FD001)[:30]
    ]
    assert set(task.predict(w_mine, window)) == {"rul"}


def test_a_toml_in_a_tasks_dir_is_a_task_whose_hash_covers_the_file(tmp_path: Path) -> None:
    from site_node.training.tasks.registry import get_task, scan

    folder = tmp_path / "tasks"
    folder.mkdir()
    path = write_task(folder, BASE, "pump.toml")
    task = scan(folder).tasks["pump-failure"]
    assert (task.kind, task.source) == ("declared", f"dir:{folder.resolve()}")
    assert task.window == 3 and task.outputs == {"p_fail": ""}
    paths = write_pump_data(tmp_path)
    data = get_task("pump-failure", tasks_dir=folder).load_dataset(paths)
    assert len(data.x_train) > 0
    before = task.code_hash
    path.write_text(path.read_text() + "# one more byte\n")
    assert scan(folder).tasks["pump-failure"].code_hash != before
    (folder / "broken.toml").write_text('[task]\nname = "x"\n')
    problems = scan(folder).problems
    assert any("broken.toml" in p and "input: required key is missing" in p for p in problems)


@pytest.mark.train
@pytest.mark.slow
def test_a_declared_task_trains_as_a_datasite_job(tmp_path: Path) -> None:
    """The hosted table (only the declared columns) and its mock go through PySyft, and
    the job body loads, trains and scores the declared task inside the datasite."""
    import pandas as pd

    from site_node.training.datasite import Datasite
    from site_node.training.tasks.registry import get_task

    ids = pd.read_csv(AI4I_CSV, encoding="utf-8-sig")["Product ID"][:800].tolist()
    site = Datasite.open(tmp_path, "t-site")
    try:
        hosted = site.host_dataset("ai4i", "ai4i-declared", [AI4I_CSV], {"entities": ids})
        assert hosted.rows == 800
        mock = site.ds.datasets["ai4i"].assets[0].mock
        assert "TWF" not in mock.columns and "Machine failure" in mock.columns
        task = get_task("ai4i-declared")
        start = task.initial_weights()
        site.submit_job("job-1", "ai4i-declared", start, {"epochs": 1})
        site.approve("job-1")
        weights, n, metrics = site.run("job-1")
        assert n == len(task.load_dataset([str(AI4I_CSV)], {"entities": ids}).x_train)
        assert weights != start and metrics["train_loss"] > 0
    finally:
        site.close()


def test_fedmq_site_tasks_lists_a_declared_task_of_a_tasks_dir(tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    write_task(folder, BASE, "pump.toml")
    out = subprocess.run(
        [str(SITE_BIN), "tasks", "--tasks-dir", str(folder), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listed = {t["name"]: t for t in json.loads(out.stdout)["tasks"]}
    pump = listed["pump-failure"]
    assert (pump["kind"], pump["source"], pump["version"]) == (
        "declared",
        f"dir:{folder.resolve()}",
        "0.1",
    )
    assert pump["files"][0] == "pump.toml"
    assert {"ai4i-declared", "cmapss-fd001-declared"} <= set(listed)
