"""FedAvg maths and the pickle-free weights format (coordinator and site sides)."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from coordinator.training.aggregate import (
    AggregationError,
    WeightsFormatError,
    dump_npz,
    fedavg,
    load_npz,
)
from site_node.training import weights_io


def _npz(**arrays: np.ndarray) -> bytes:
    return dump_npz(arrays)


def test_fedavg_is_the_sample_weighted_mean() -> None:
    a = _npz(w=np.array([[1.0, 2.0]], np.float32), b=np.array([0.0], np.float32))
    b = _npz(w=np.array([[3.0, 6.0]], np.float32), b=np.array([4.0], np.float32))
    out = load_npz(fedavg([(a, 1), (b, 3)]))
    np.testing.assert_array_equal(out["w"], np.array([[2.5, 5.0]], np.float32))
    np.testing.assert_array_equal(out["b"], np.array([3.0], np.float32))
    assert out["w"].dtype == np.float32


def test_fedavg_of_one_result_is_that_result() -> None:
    w = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(load_npz(fedavg([(_npz(w=w), 7)]))["w"], w)


@pytest.mark.parametrize(
    ("other", "words"),
    [
        ({"w": np.zeros(2, np.float32), "extra": np.zeros(1, np.float32)}, "different arrays"),
        ({"w": np.zeros(3, np.float32)}, "(3,)"),
        ({"w": np.zeros(2, np.float64)}, "float64"),
    ],
)
def test_fedavg_refuses_mismatched_results(other: dict[str, np.ndarray], words: str) -> None:
    with pytest.raises(AggregationError, match=words.replace("(", r"\(").replace(")", r"\)")):
        fedavg([(_npz(w=np.zeros(2, np.float32)), 1), (dump_npz(other), 1)])


def test_fedavg_refuses_nothing_and_zero_samples() -> None:
    with pytest.raises(AggregationError, match="no results"):
        fedavg([])
    with pytest.raises(AggregationError, match="zero samples"):
        fedavg([(_npz(w=np.ones(2)), 0)])


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickle executed",))


def _pickle_payloads() -> list[bytes]:
    buf = io.BytesIO()
    np.save(buf, np.array([_Boom()], dtype=object), allow_pickle=True)
    obj_npz = io.BytesIO()
    np.savez(obj_npz, w=np.array([_Boom()], dtype=object))
    return [pickle.dumps({"w": _Boom()}), buf.getvalue(), obj_npz.getvalue(), b"garbage"]


@pytest.mark.parametrize("payload", _pickle_payloads())
def test_pickle_payloads_are_refused_on_both_sides(
    payload: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(WeightsFormatError):
        load_npz(payload)
    with pytest.raises(weights_io.WeightsFormatError):
        weights_io.load_npz(payload)
    with pytest.raises(ValueError):  # never silently averaged
        fedavg([(payload, 1)])
    assert "pickle executed" not in capsys.readouterr().out


def test_npz_round_trip_site_to_coordinator_and_torch() -> None:
    import torch

    state = {"conv.weight": torch.randn(4, 3, 5), "fc.bias": torch.arange(3, dtype=torch.float32)}
    raw = weights_io.state_dict_to_npz(state)
    back = weights_io.npz_to_state_dict(raw)
    assert set(back) == set(state)
    for key in state:
        assert torch.equal(back[key], state[key])
    np.testing.assert_array_equal(load_npz(raw)["fc.bias"], np.arange(3, dtype=np.float32))
    with pytest.raises(weights_io.WeightsFormatError, match="object"):
        weights_io.dump_npz({"w": np.array([object()], dtype=object)})
