"""The ai4i-failure task: no leaking columns, class-weighted training, F1/AUC."""

from __future__ import annotations

import numpy as np
import pytest

from site_node.training.tasks import get_task
from tests.helpers.data import AI4I_CSV

CSV = AI4I_CSV
LEAKS = ["TWF", "HDF", "PWF", "OSF", "RNF", "UDI", "Product ID"]


def test_leaking_columns_never_reach_the_table_or_the_inputs() -> None:
    import pandas as pd

    from site_node.training.tasks.ai4i_failure import FEATURES, LABEL, features

    table = get_task("ai4i-failure").read_table(CSV, {"types": ["M"]})
    assert not set(LEAKS) & set(table.columns)
    assert set(table["Type"]) == {"M"}
    assert not set(LEAKS) & set(FEATURES) and LABEL not in FEATURES
    # Features of a table whose failure-mode columns equal the label are the same as
    # without them: nothing derived from those columns gets in.
    full = pd.read_csv(CSV, encoding="utf-8-sig").head(500)
    leaky = full.copy()
    for col in ("TWF", "HDF", "PWF", "OSF", "RNF"):
        leaky[col] = leaky[LABEL]
    np.testing.assert_array_equal(features(full), features(leaky))
    np.testing.assert_array_equal(features(full), features(full.drop(columns=LEAKS)))


def test_auc_by_ranks() -> None:
    from site_node.training.tasks.ai4i_failure import _auc

    y = np.array([0, 0, 1, 1, 0, 1], np.float64)
    assert _auc(y, np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])) == 1.0
    assert _auc(y, -np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])) == 0.0
    assert _auc(y, np.ones(6)) == 0.5


def test_train_small_share_gives_metrics() -> None:
    task = get_task("ai4i-failure")
    data = task.load_dataset(CSV, {"udi_range": [1, 3000]})
    assert len(data.x_train) == 2400 and len(data.x_val) == 600
    weights, n, metrics = task.train(None, data, {"epochs": 3})
    assert n == 2400
    assert set(metrics) == {"train_loss", "loss", "f1", "auc"}
    assert 0.0 <= metrics["f1"] <= 1.0
    assert metrics["auc"] > 0.75  # failures are learnable from the readings alone
    scores = task.evaluate(weights, data)
    pr_auc = scores["pr_auc"]
    assert set(scores) == {"loss", "f1", "auc", "pr_auc"}
    assert isinstance(pr_auc, float) and 0 < pr_auc <= 1
    assert {k: scores[k] for k in ("loss", "f1", "auc")} == pytest.approx(
        {k: metrics[k] for k in ("loss", "f1", "auc")}
    )


def test_evaluate_gives_reasons_for_metrics_a_one_class_split_cannot_have() -> None:
    task = get_task("ai4i-failure")
    data = task.load_dataset(CSV, {"udi_range": [1, 3000]})
    only_ok = type(data)(data.x_train, data.y_train, data.x_val[data.y_val == 0],
                         data.y_val[data.y_val == 0])  # fmt: skip
    n = len(only_ok.y_val)
    scores = task.evaluate(task.initial_weights(), only_ok)
    assert scores["auc"] == f"one class only in the validation split (0 positives of {n})"
    assert scores["pr_auc"] == f"no positives in the validation split (0 of {n})"
    assert isinstance(scores["loss"], float) and scores["loss"] > 0
    # F1 is 0 with false alarms, undefined (a reason) without any
    assert isinstance(scores["f1"], float) or scores["f1"].startswith("no positives")
    empty = type(data)(data.x_train, data.y_train, data.x_val[:0], data.y_val[:0])
    assert set(task.evaluate(task.initial_weights(), empty).values()) == {"empty validation split"}
