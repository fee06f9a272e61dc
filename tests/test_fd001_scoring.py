"""The cmapss-rul model's score on the FD001 test set, computed site-side where the model
code lives (``site_node/training/tasks/fd001_scoring.py``), and ``fedmq-site task
evaluate`` printing it for a model file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from site_node.training.tasks import cmapss_rul, fd001_scoring, get_task
from tests.helpers.data import TRAIN_FD001

REPO = Path(__file__).resolve().parents[1]
DATA = fd001_scoring.DEFAULT_DATA_DIR
SITE_CLI = [sys.executable, "-c", "from site_node.cli import main; main()"]

# Measured with the coordinator's former copy of the model (coordinator/training/
# fd001_eval.py, deleted in the same change): fd001_test_rmse(initial_weights(0)) gave
# 73.38579108321908 on this test set, and the site-side function gave the identical float
# (also for seeds 1 and 7 and for randomly perturbed weights).
INITIAL_WEIGHTS_RMSE = 73.38579108321908


def test_the_test_set_ships_with_the_site_and_is_the_last_window_of_each_engine() -> None:
    assert DATA == REPO / "site_node" / "data" / "cmapss_fd001"
    assert not (REPO / "coordinator" / "data").exists()
    x, truth = fd001_scoring.fd001_test_set()
    assert x.shape == (100, 30, 14) and truth.shape == (100,)
    assert truth.max() <= 125 and truth[0] == 112  # RUL_FD001.txt line 1
    table = get_task("cmapss-rul").read_table(DATA / "test_FD001.txt")
    site_x, _, units = cmapss_rul.windows(table, last_only=True)
    np.testing.assert_allclose(x, site_x, rtol=1e-6)
    assert list(units) == list(range(1, 101))


def test_initial_weights_score_what_the_former_coordinator_copy_measured() -> None:
    task = get_task("cmapss-rul")
    metrics = task.score_test_set(task.initial_weights(0))
    assert metrics["n"] == 100
    assert metrics["rmse"] == pytest.approx(INITIAL_WEIGHTS_RMSE, rel=1e-9)


def test_a_trained_model_scores_its_own_forward_pass() -> None:
    task = get_task("cmapss-rul")
    data = task.load_dataset(TRAIN_FD001, {"units": [1, 2, 3]})
    weights, _, _ = task.train(None, data, {"epochs": 1})
    result = fd001_scoring.fd001_test_metrics(weights)
    x, truth = fd001_scoring.fd001_test_set()
    model = cmapss_rul.RulCnn()
    from site_node.training.weights_io import npz_to_state_dict

    model.load_state_dict(npz_to_state_dict(weights))
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).double().numpy()
    assert result["n"] == 100
    assert result["rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - truth) ** 2))))
    assert result["rmse"] != pytest.approx(INITIAL_WEIGHTS_RMSE)
    with pytest.raises(ValueError, match="keys differ"):
        fd001_scoring.fd001_test_metrics(get_task("ai4i-failure").initial_weights())
    with pytest.raises(LookupError):
        get_task("ai4i-failure").score_test_set(weights)


def _site(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SITE_CLI, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_fedmq_site_task_evaluate_prints_the_metrics(tmp_path: Path) -> None:
    weights = tmp_path / "model.npz"
    weights.write_bytes(get_task("cmapss-rul").initial_weights(0))
    out = _site("task", "evaluate", "--task", "cmapss-rul", "--weights", str(weights), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["task"] == "cmapss-rul" and doc["n"] == 100
    assert doc["rmse"] == pytest.approx(INITIAL_WEIGHTS_RMSE, rel=1e-9)
    text = _site("task", "evaluate", "--task", "cmapss-rul", "--weights", str(weights))
    assert text.returncode == 0 and "73.386" in text.stdout and "100 engines" in text.stdout

    helptext = _site("task", "evaluate", "--help").stdout
    assert "fedmq-site task evaluate --task cmapss-rul --weights model.npz" in helptext

    # One-line errors with the CLI's exit codes: 2 usage/bad input, 3 not found.
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    for args, code in (
        (["--task", "nope", "--weights", str(weights)], 2),
        (["--task", "ai4i-failure", "--weights", str(weights)], 2),
        (["--task", "cmapss-rul", "--weights", str(tmp_path / "missing.npz")], 3),
        (["--task", "cmapss-rul", "--weights", str(bad)], 2),
    ):
        res = _site("task", "evaluate", *args)
        assert res.returncode == code, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
