"""The coordinator's copy of the cmapss-rul model equals the site's; FD001 test RMSE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coordinator.training import fd001_eval
from site_node.training.tasks import cmapss_rul, get_task
from tests.helpers.data import TRAIN_FD001

# The packaged copies: the test set ships with the coordinator, training runs with the site.
DATA = fd001_eval.DEFAULT_DATA_DIR
TRAIN = TRAIN_FD001


def test_architectures_and_constants_are_identical() -> None:
    torch.manual_seed(0)
    site, coord = cmapss_rul.RulCnn(), fd001_eval.build_model()
    s_state, c_state = site.state_dict(), coord.state_dict()
    assert [(k, v.shape, v.dtype) for k, v in s_state.items()] == [
        (k, v.shape, v.dtype) for k, v in c_state.items()
    ]
    coord.load_state_dict(s_state)
    x = torch.rand(16, cmapss_rul.WINDOW, len(cmapss_rul.SENSORS))
    site.eval(), coord.eval()
    with torch.no_grad():
        assert torch.equal(site(x), coord(x))
        # Large inputs push raw outputs outside [0, cap]: both clip the same way in eval...
        wide = (x - 0.5) * 200
        out = site(wide)
        assert torch.equal(out, coord(wide))
        assert out.min() >= 0 and out.max() <= cmapss_rul.RUL_CAP
        # ...and neither clips in training mode (a clipped output would get no gradient).
        site.train(), coord.train()
        raw = site(wide)
        assert torch.equal(raw, coord(wide))
        assert raw.min() < 0 or raw.max() > cmapss_rul.RUL_CAP
    np.testing.assert_array_equal(fd001_eval.SENSOR_MIN, cmapss_rul.SENSOR_MIN)
    np.testing.assert_array_equal(fd001_eval.SENSOR_MAX, cmapss_rul.SENSOR_MAX)
    names = [cmapss_rul.COLUMNS[i] for i in fd001_eval.SENSOR_COLUMNS]
    assert names == cmapss_rul.SENSORS
    assert (fd001_eval.WINDOW, fd001_eval.RUL_CAP) == (cmapss_rul.WINDOW, cmapss_rul.RUL_CAP)


def test_fd001_test_set_is_the_last_window_of_each_engine() -> None:
    x, truth = fd001_eval.fd001_test_set(DATA)
    assert x.shape == (100, 30, 14) and truth.shape == (100,)
    assert truth.max() <= 125 and truth[0] == 112  # RUL_FD001.txt line 1
    table = get_task("cmapss-rul").read_table(DATA / "test_FD001.txt")
    site_x, _, units = cmapss_rul.windows(table, last_only=True)
    np.testing.assert_allclose(x, site_x, rtol=1e-6)
    assert list(units) == list(range(1, 101))


def test_fd001_rmse_of_a_tiny_model_matches_the_site_model() -> None:
    task = get_task("cmapss-rul")
    data = task.load_dataset(TRAIN, {"units": [1, 2, 3]})
    weights, _, _ = task.train(None, data, {"epochs": 1})
    result = fd001_eval.fd001_test_rmse(weights, DATA)
    x, truth = fd001_eval.fd001_test_set(DATA)
    model = cmapss_rul.RulCnn()
    from site_node.training.weights_io import npz_to_state_dict

    model.load_state_dict(npz_to_state_dict(weights))
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).double().numpy()
    assert result["n_engines"] == 100
    assert result["rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - truth) ** 2))))
    with pytest.raises(RuntimeError):
        fd001_eval.fd001_test_rmse(get_task("ai4i-failure").initial_weights(), DATA)
