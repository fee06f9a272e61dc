"""What a run resumed after ``kill -9`` of its serve must look like, on either store.

The restart tests drive a run over fake training sites whose answer moves the model by a
known delta (:func:`delta_answer`), kill serve in the middle of round 2, start it again
and check with :func:`assert_resumed_run` that the run finished with each site's result
counted once per round. ``db`` is a SQLite file or a ``postgresql://`` URL: the checks read
through :class:`coordinator.store.training.TrainDb`, which speaks both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from coordinator.store.training import TrainDb
from coordinator.training.aggregate import dump_npz, load_npz
from tests.helpers.fake_trainer import Answer

__all__ = ["assert_resumed_run", "delta_answer"]

SAMPLES = 100  # what every fake site reports per result


def delta_answer(delta: float) -> Answer:
    """A site that returns the global model (zeros in round 1) plus ``delta``."""

    def answer(_rnd: int, glob: dict[str, np.ndarray] | None) -> tuple[bytes, int]:
        base = glob if glob is not None else {"w": np.zeros((4, 3), np.float32)}
        return dump_npz({k: v + np.float32(delta) for k, v in base.items()}), SAMPLES

    return answer


def assert_resumed_run(
    db: Path | str, run_id: str, sites: list[str], deltas: list[float], killed_round: int = 2
) -> None:
    """The run is done; every round aggregated each site's result exactly once (the
    killed round's first jobs were sent again and never count); the last model moved
    by the mean delta per round."""
    t = TrainDb(db)
    try:
        run = t.run(run_id)
        assert run is not None and run["state"] == "done", run
        rounds = t.rounds(run_id)
        n = len(sites)
        assert [(r["round"], r["state"], r["n_results"]) for r in rounds] == [
            (k, "aggregated", n) for k in range(1, int(run["rounds"]) + 1)
        ], rounds
        samples = t.conn.execute(
            "SELECT n_samples FROM models WHERE run_id = ? ORDER BY round", (run_id,)
        ).fetchall()
        assert [int(r[0]) for r in samples] == [SAMPLES * n] * len(rounds)
        weights = t.model_weights(f"{run_id}-r{len(rounds)}")
        assert weights is not None
        moved = len(rounds) * sum(deltas) / len(deltas)
        np.testing.assert_allclose(load_npz(weights)["w"], np.full((4, 3), moved), rtol=1e-6)
        jobs: list[dict[str, Any]] = t.jobs(run_id)
    finally:
        t.close()
    for r in rounds:
        counted = [j for j in jobs if j["round"] == r["round"] and not j["late"]]
        assert sorted(j["site"] for j in counted) == sorted(sites), (r["round"], jobs)
        assert all(j["state"] == "done" for j in counted), jobs
    late = sorted(j["site"] for j in jobs if j["round"] == killed_round and j["late"])
    assert late == sorted(sites), jobs
