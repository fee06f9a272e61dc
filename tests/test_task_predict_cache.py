"""A deployed model is scored every few seconds with the same weights: the built-in tasks
build it once per weights (``common.scoring_model``), and new weights are never served
from the old model."""

from __future__ import annotations

from site_node.training.tasks import cmapss_rul
from site_node.training.tasks.common import scoring_model


def _window() -> list[dict[str, float]]:
    mid = {
        s: float((lo + hi) / 2)
        for s, lo, hi in zip(
            cmapss_rul.SENSORS, cmapss_rul.SENSOR_MIN, cmapss_rul.SENSOR_MAX, strict=True
        )
    }
    return [dict(mid) for _ in range(cmapss_rul.WINDOW)]


def test_the_model_is_built_once_per_weights_and_rebuilt_for_new_ones() -> None:
    built: list[bytes] = []

    def build(weights: bytes) -> object:
        built.append(weights)
        return object()

    a, b = b"weights-a", b"weights-b"
    first = scoring_model(build, a)
    assert scoring_model(build, a) is first
    assert scoring_model(build, bytes(bytearray(a))) is first  # equal bytes, another object
    other = scoring_model(build, b)
    assert other is not first and built == [a, b]
    assert scoring_model(build, a) is not first  # one entry per builder: rebuilt


def test_cmapss_predict_follows_the_weights_it_is_given() -> None:
    w0, w1 = cmapss_rul.initial_weights(0), cmapss_rul.initial_weights(1)
    window = _window()
    p0 = cmapss_rul.predict(w0, window, {})["rul"]
    p1 = cmapss_rul.predict(w1, window, {})["rul"]
    assert p0 != p1
    assert cmapss_rul.predict(w0, window, {})["rul"] == p0
    # The same answer as a model built afresh from those weights.
    fresh = cmapss_rul.model_outputs(cmapss_rul._model(w0), _x(window))
    assert float(fresh[0]) == p0


def _x(window: list[dict[str, float]]):  # type: ignore[no-untyped-def]
    import numpy as np

    raw = np.array([[r[s] for s in cmapss_rul.SENSORS] for r in window], np.float64)
    span = cmapss_rul.SENSOR_MAX - cmapss_rul.SENSOR_MIN
    return ((raw - cmapss_rul.SENSOR_MIN) / span).astype(np.float32)[None]
