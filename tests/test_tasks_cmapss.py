"""The cmapss-rul task on a few FD001 engines (lr schedule, split), the registry's imports."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from site_node.training.tasks import TASKS, UnknownTaskError, get_task
from tests.helpers.data import TRAIN_FD001

# The copy shipped with the site package.
TRAIN = TRAIN_FD001


def test_registry_hashes_code_without_importing_torch() -> None:
    code = (
        "import sys, site_node.training.tasks as t\n"
        "print(t.get_task('cmapss-rul').code_hash)\n"
        "assert 'torch' not in sys.modules and 'syft' not in sys.modules, 'heavy import'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = Path(__file__).resolve().parents[1] / "site_node" / "training" / "tasks"
    digest = hashlib.sha256()  # (path, size, bytes) of each file in path order
    for rel in ("cmapss_rul.py", "common.py"):
        data = (here / rel).read_bytes()
        digest.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    expected = digest.hexdigest()
    assert out.stdout.strip() == expected
    assert TASKS["ai4i-failure"].code_hash != expected
    with pytest.raises(UnknownTaskError, match="nope"):
        get_task("nope")


@pytest.fixture(scope="module")
def small() -> object:
    task = get_task("cmapss-rul")
    return task.load_dataset(TRAIN, {"units": [1, 2, 3, 4, 5]})


def test_dataset_windows_and_split_by_engine(small: object) -> None:
    from site_node.training.tasks.cmapss_rul import RUL_CAP, WINDOW, CmapssData

    assert isinstance(small, CmapssData)
    assert len(small.val_units) == 1 and len(small.train_units) == 4
    assert not set(small.val_units) & set(small.train_units)
    assert small.x_train.shape[1:] == (WINDOW, 14) and small.x_train.dtype == np.float32
    assert small.y_train.max() == RUL_CAP and small.y_train.min() == 0
    # Fixed FD001 constants: the scaled training data stays (about) within [0, 1].
    assert small.x_train.min() >= -0.01 and small.x_train.max() <= 1.01


def test_train_then_evaluate_matches_and_is_deterministic(small: object) -> None:
    task = get_task("cmapss-rul")
    start = task.initial_weights(seed=3)
    seen: list[float] = []
    w1, n, metrics = task.train(start, small, {"epochs": 1, "seed": 1}, seen.append)
    w2, _, _ = task.train(start, small, {"epochs": 1, "seed": 1})
    assert w1 == w2 and w1 != start
    assert n == len(small.x_train)  # type: ignore[attr-defined]
    assert set(metrics) == {"train_loss", "loss", "rmse"} and metrics["rmse"] > 0
    assert seen[-1] == 1.0 and seen == sorted(seen)
    scores = task.evaluate(w1, small)
    mae, rmse = scores["mae"], scores["rmse"]
    assert set(scores) == {"loss", "rmse", "mae"}
    assert isinstance(mae, float) and isinstance(rmse, float) and 0 < mae <= rmse
    assert {k: scores[k] for k in ("loss", "rmse")} == pytest.approx(
        {"loss": metrics["loss"], "rmse": metrics["rmse"]}
    )


def test_fedprox_pulls_towards_the_global_model(small: object) -> None:
    from site_node.training.weights_io import load_npz

    task = get_task("cmapss-rul")
    start = task.initial_weights(seed=0)
    hp = {"epochs": 1, "lr": 0.01}
    avg, _, _ = task.train(start, small, {**hp, "strategy": "fedavg"})
    prox, _, _ = task.train(start, small, {**hp, "strategy": "fedprox", "mu": 100.0})

    def drift(raw: bytes) -> float:
        a, b = load_npz(raw), load_npz(start)
        return sum(float(np.sum((a[k] - b[k]) ** 2)) for k in a)

    assert drift(prox) < drift(avg)


def test_bad_hyperparams_and_weights_are_refused(small: object) -> None:
    task = get_task("cmapss-rul")
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        task.train(None, small, {"epochs": 1, "momentum": 0.9})
    with pytest.raises(ValueError, match="strategy"):
        task.train(None, small, {"strategy": "sgd"})
    with pytest.raises(ValueError, match="keys differ"):
        task.train(get_task("ai4i-failure").initial_weights(), small, {"epochs": 1})


def test_lr_schedule_follows_the_round(small: object) -> None:
    from site_node.training.weights_io import load_npz

    task = get_task("cmapss-rul")
    start = task.initial_weights(seed=0)
    hp = {"epochs": 1, "lr": 0.01, "seed": 2}

    def drift(raw: bytes) -> float:
        a, b = load_npz(raw), load_npz(start)
        return sum(float(np.sum((a[k] - b[k]) ** 2)) for k in a)

    flat0, _, _ = task.train(start, small, {**hp, "lr_decay": 1.0, "round": 0})
    flat9, _, _ = task.train(start, small, {**hp, "lr_decay": 1.0, "round": 9})
    assert flat0 == flat9  # no decay: the round changes nothing
    late, _, _ = task.train(start, small, {**hp, "lr_decay": 0.5, "round": 9})
    # lr * 0.5**9 in round 9: the model barely moves from the global weights.
    assert drift(late) < 0.01 * drift(flat0)
    for bad in ({"lr_decay": 0.0}, {"lr_decay": 1.5}, {"round": -1}, {"weight_decay": -1}):
        with pytest.raises(ValueError, match="lr_decay"):
            task.train(start, small, {**hp, **bad})


def test_val_fraction_zero_trains_on_every_engine() -> None:
    task = get_task("cmapss-rul")
    data = task.load_dataset(TRAIN, {"units": [1, 2, 3], "val_fraction": 0})
    assert data.train_units == (1, 2, 3) and data.val_units == ()
    assert len(data.x_val) == 0
    # Nothing to score on: every metric is a reason (task contract), not left out.
    scores = task.evaluate(task.initial_weights(), data)
    assert scores == dict.fromkeys(
        ("loss", "rmse", "mae"), "no validation windows (0 validation engines)"
    )
