"""Server-side strategies (coordinator/training/strategy.py): FedAdam and FedYogi on a
federation of quadratic clients, the optimizer state's round trip, and its persistence
per round in the store (what a resumed run continues from)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.store.training import TrainDb
from coordinator.training.aggregate import aggregate, dump_npz, load_npz
from coordinator.training.events import TrainSpec
from coordinator.training.round import next_global
from coordinator.training.strategy import ServerOpt, site_strategy, validate_options

# Client i minimises 0.5 * ||w - c_i||^2 by a few local gradient steps: the federation's
# optimum is the sample-weighted mean of the c_i.
CENTERS = [np.array([3.0, -1.0, 0.5]), np.array([1.0, 2.0, -2.0]), np.array([-2.0, 0.5, 4.0])]
SAMPLES = [100, 300, 200]
OPTIMUM = sum(c * n for c, n in zip(CENTERS, SAMPLES, strict=True)) / sum(SAMPLES)


def _local(w: np.ndarray, center: np.ndarray, steps: int = 3, lr: float = 0.1) -> np.ndarray:
    for _ in range(steps):
        w = w - lr * (w - center)
    return w


def _round(model: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The round's FedAvg aggregate of the clients' local models, plus a counter array."""
    results = [
        ({"w": _local(model["w"], c).astype(np.float32), "n": model["n"] + 1}, n)
        for c, n in zip(CENTERS, SAMPLES, strict=True)
    ]
    return aggregate("fedavg", results)


def _start() -> dict[str, np.ndarray]:
    return {"w": np.zeros(3, np.float32), "n": np.array(0, np.int64)}


def _loss(w: np.ndarray) -> float:
    return float(np.sum((w.astype(np.float64) - OPTIMUM) ** 2))


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi"])
def test_adaptive_server_optimizer_converges_on_a_quadratic(kind: str) -> None:
    opt = ServerOpt(kind, lr=0.1, tau=1e-3)  # type: ignore[arg-type]
    model = _start()
    losses = [_loss(model["w"])]
    for _ in range(150):
        model = opt.step(model, _round(model))
        losses.append(_loss(model["w"]))
    assert losses[-1] < 1e-3 * losses[0], losses[::15]
    np.testing.assert_allclose(model["w"], OPTIMUM, atol=0.02)
    assert model["w"].dtype == np.float32
    assert int(model["n"]) == 150  # integer arrays take the aggregate as is
    assert opt.steps == 150


def test_fedadam_moves_by_at_most_about_server_lr_per_coordinate() -> None:
    # The adaptive step is normalised: |m / (sqrt(v) + tau)| <= ~1 per coordinate.
    opt = ServerOpt("fedadam", lr=0.05, beta1=0.0, beta2=0.0, tau=1e-9)
    cur = {"w": np.zeros(4)}
    new = opt.step(cur, {"w": np.array([1e-3, -5.0, 100.0, 0.0])})
    np.testing.assert_allclose(new["w"], [0.05, -0.05, 0.05, 0.0], atol=1e-6)


def test_state_round_trip_continues_exactly_where_it_stopped() -> None:
    straight = ServerOpt("fedyogi", lr=0.05, beta1=0.8, beta2=0.95, tau=1e-2)
    a = _start()
    for _ in range(10):
        a = straight.step(a, _round(a))

    first = ServerOpt("fedyogi", lr=0.05, beta1=0.8, beta2=0.95, tau=1e-2)
    b = _start()
    for _ in range(5):
        b = first.step(b, _round(b))
    raw = first.dump()
    second = ServerOpt.load(raw, "fedyogi")  # a restarted daemon
    assert (second.lr, second.beta1, second.beta2, second.tau, second.steps) == (
        0.05, 0.8, 0.95, 1e-2, 5,
    )  # fmt: skip
    for _ in range(5):
        b = second.step(b, _round(b))
    np.testing.assert_array_equal(a["w"], b["w"])
    # Without the state the resumed run would differ: the test can fail.
    c = _start()
    for _half in range(2):
        fresh = ServerOpt("fedyogi", lr=0.05, beta1=0.8, beta2=0.95, tau=1e-2)
        for _ in range(5):
            c = fresh.step(c, _round(c))
    assert not np.array_equal(c["w"], a["w"])


def test_bad_settings_and_mismatched_arrays_are_refused() -> None:
    for args in (("fedmean", 0.1, 0.9, 0.99, 1e-3), ("fedadam", 0.0, 0.9, 0.99, 1e-3),
                 ("fedadam", 0.1, 1.0, 0.99, 1e-3), ("fedadam", 0.1, 0.9, 0.99, 0.0),
                 ("fedadam", float("nan"), 0.9, 0.99, 1e-3)):  # fmt: skip
        with pytest.raises(ValueError):
            validate_options(*args)
    opt = ServerOpt()
    with pytest.raises(ValueError, match="differ"):
        opt.step({"a": np.zeros(2)}, {"b": np.zeros(2)})
    with pytest.raises(ValueError, match="'a'"):
        opt.step({"a": np.zeros(2)}, {"a": np.zeros(3)})
    with pytest.raises(ValueError, match="unreadable"):
        ServerOpt.load(b"not an npz", "fedadam")
    assert site_strategy("fedprox") == "fedprox"
    assert {site_strategy(s) for s in ("fedavg", "fedadam", "fedyogi")} == {"fedavg"}


def _spec(strategy: str, **kw: float) -> TrainSpec:
    return TrainSpec(task="t", strategy=strategy, **kw)  # type: ignore[arg-type]


def test_next_global_persists_the_moments_per_round_for_a_resumed_run(tmp_path: Path) -> None:
    spec = _spec("fedadam", server_lr=0.1)
    db = TrainDb(tmp_path / "coord.db")
    try:
        model = _start()
        # Round 1: no global model on the server yet: the aggregate is model 1 as is.
        agg = _round(model)
        model = next_global(db, spec, "run-x", 1, None, agg)
        assert {k: v.tolist() for k, v in model.items()} == {k: v.tolist() for k, v in agg.items()}
        assert db.strategy_state("run-x", 1) is None
        for rnd in (2, 3):
            model = next_global(db, spec, "run-x", rnd, dump_npz(model), _round(model))
            assert db.strategy_state("run-x", rnd) is not None
    finally:
        db.close()
    # The daemon restarts: round 4 continues from round 3's moments.
    db = TrainDb(tmp_path / "coord.db")
    try:
        resumed = next_global(db, spec, "run-x", 4, dump_npz(model), _round(model))
    finally:
        db.close()
    opt = ServerOpt("fedadam", lr=0.1)
    straight = _start()
    straight = _round(straight)
    for _ in (2, 3, 4):
        straight = opt.step(straight, _round(straight))
    np.testing.assert_array_equal(resumed["w"], straight["w"])
    assert load_npz(dump_npz(resumed))["w"].dtype == np.float32


def test_fedavg_and_fedprox_take_the_aggregate(tmp_path: Path) -> None:
    db = TrainDb(tmp_path / "coord.db")
    try:
        for strategy in ("fedavg", "fedprox"):
            model = _start()
            agg = _round(model)
            out = next_global(db, _spec(strategy), "run-y", 2, dump_npz(model), agg)
            np.testing.assert_array_equal(out["w"], agg["w"])
            assert db.strategy_state("run-y", 2) is None
    finally:
        db.close()
