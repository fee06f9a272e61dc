"""One bad site cannot poison or crash a training run.

Unit tests of the weights check (npy headers before data), the vetting of a result and
the robust aggregates; then the real path: a real Mosquitto, a real ``fedmq serve``, a
real ``fedmq train`` subprocess, and fake training sites (no syft) on their own topics,
some of them sending poisoned results (NaN, huge n_samples, wrong shape, a 1 KB header
bomb, a zip bomb). The run must finish on the honest sites, each poisoned result
excluded from its round with a stored reason.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import tracemalloc
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.admin.signing import generate_keypair
from coordinator.store.training import TrainDb
from coordinator.training.aggregate import aggregate, dump_npz, load_npz, trim_count
from coordinator.training.events import TrainSpec
from coordinator.training.inbox import JobTrack
from coordinator.training.vet import exclude_minority, vet_result
from coordinator.training.weights_check import (
    ArraySpec,
    WeightsRejected,
    check_weights,
    read_signature,
)
from schemas import JobResult, make_blob
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, sites_json, wait_until
from tests.helpers.fake_trainer import FakeTrainer

TASK = "toy"
CODE_HASH = "c" * 64
MB = 1024 * 1024


# --- poisoned archives -----------------------------------------------------------------


def _initial() -> dict[str, np.ndarray]:
    return {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def header_bomb() -> bytes:
    """~1 KB: an npy header declaring a 4 TB array, with 8 bytes of data (stored)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("w.npy", _npy_header((10**12,)) + b"\0" * 8)
        zf.writestr("b.npy", _npy_header((3,)) + b"\0" * 12)
    raw = buf.getvalue()
    assert len(raw) < 1024
    return raw


def zip_bomb(declared: int = 320 * MB) -> bytes:
    """Deflated zeros whose header and stored size both say ``declared`` bytes of float32."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("w.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((declared // 4,)))
            block = bytes(MB)
            for _ in range(declared // MB):
                f.write(block)
        zf.writestr("b.npy", _npy_header((3,)) + b"\0" * 12)
    return buf.getvalue()


def honest(delta: float, n: int) -> Callable[[int, Any], tuple[bytes, int]]:
    """A site whose update is the global model + ``delta`` (initial model in round 1)."""

    def answer(_rnd: int, glob: dict[str, np.ndarray] | None) -> tuple[bytes, int]:
        base = glob if glob is not None else _initial()
        return dump_npz({k: (v + np.float32(delta)).astype(v.dtype) for k, v in base.items()}), n

    return answer


def nan_weights(rnd: int, glob: Any) -> tuple[bytes, int]:
    raw, _ = honest(1.0, 100)(rnd, glob)
    arrays = load_npz(raw)
    arrays["w"][0, 0] = np.nan
    return dump_npz(arrays), 100


def huge_samples(rnd: int, glob: Any) -> tuple[bytes, int]:
    return honest(1000.0, 0)(rnd, glob)[0], 10**15  # the site registered 1000 rows


def wrong_shape(_rnd: int, _glob: Any) -> tuple[bytes, int]:
    return dump_npz({"w": np.ones((5, 3), np.float32), "b": np.ones(3, np.float32)}), 100


# The poison and the reason its result is excluded for, in round 1 (no global model yet:
# size bound, and the arrays most results agree on) and in round 2 (the global model's).
_BIG = "weights declare more than 268435456 bytes"
POISONS: dict[str, tuple[Callable[[int, Any], tuple[bytes, int]], tuple[str, str]]] = {
    "nan": (nan_weights, ("1 non-finite value",) * 2),
    "n_samples": (huge_samples, ("n_samples 1000000000000000 exceeds the 1000 rows",) * 2),
    "shape": (wrong_shape, ("differ from the 2 result(s) the round agrees on: array 'w' is "
                            "(5, 3) float32", "array 'w' is (5, 3) float32, expected (4, 3)")),
    "header_bomb": (lambda _r, _g: (header_bomb(), 100), (_BIG, "is (1000000000000,) float32")),
    "zip_bomb": (lambda _r, _g: (_zip_bomb(), 100), (_BIG, "is (83886080,) float32")),
}  # fmt: skip
ZIP_BOMB = b""  # built once, lazily (a second of deflating)


def _zip_bomb() -> bytes:
    global ZIP_BOMB
    if not ZIP_BOMB:
        ZIP_BOMB = zip_bomb()
    return ZIP_BOMB


# --- weights check (unit) ---------------------------------------------------------------

EXPECTED = {"w": ArraySpec((4, 3), "<f4"), "b": ArraySpec((3,), "<f4")}


def test_good_weights_pass_and_load() -> None:
    raw = dump_npz({"w": np.arange(12, dtype=np.float32).reshape(4, 3),
                    "b": np.ones(3, np.float32)})  # fmt: skip
    sig, arrays = check_weights(raw, EXPECTED, MB)
    assert sig == EXPECTED
    np.testing.assert_array_equal(arrays["w"], np.arange(12, dtype=np.float32).reshape(4, 3))
    assert read_signature(raw, MB) == EXPECTED


def test_header_bomb_is_refused_from_its_header_without_allocating() -> None:
    raw = header_bomb()
    with pytest.raises(MemoryError):  # the old path: numpy allocates what the header says
        load_npz(raw)
    tracemalloc.start()
    try:
        for expected in (EXPECTED, None):
            with pytest.raises(WeightsRejected, match="w"):
                check_weights(raw, expected, 256 * MB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MB


def test_zip_bomb_is_refused_before_decompressing() -> None:
    raw = _zip_bomb()
    assert len(raw) < 2 * MB
    tracemalloc.start()
    try:
        with pytest.raises(WeightsRejected, match="more than 268435456 bytes"):
            check_weights(raw, None, 256 * MB)
        with pytest.raises(WeightsRejected, match="do not match the round's model"):
            check_weights(raw, EXPECTED, 256 * MB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MB, peak


def test_stored_size_must_match_the_header() -> None:
    """A header that matches the model but a member holding more data than it declares."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("w.npy", _npy_header((4, 3)) + bytes(48) + bytes(50 * MB))
        zf.writestr("b.npy", _npy_header((3,)) + bytes(12))
    with pytest.raises(WeightsRejected, match="stored size"):
        check_weights(buf.getvalue(), EXPECTED, 256 * MB)


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"w": np.full((4, 3), np.nan, np.float32), "b": np.zeros(3, np.float32)}, "NaN"),
        ({"w": np.full((4, 3), np.inf, np.float32), "b": np.zeros(3, np.float32)}, "12 non"),
        ({"w": np.zeros((5, 3), np.float32), "b": np.zeros(3, np.float32)}, "(5, 3)"),
        ({"w": np.zeros((4, 3), np.float64), "b": np.zeros(3, np.float32)}, "float64"),
        ({"w": np.zeros((4, 3), np.float32)}, "missing arrays ['b']"),
        ({"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32),
          "x": np.zeros(1, np.float32)}, "unexpected array 'x'"),
    ],
)  # fmt: skip
def test_bad_weights_are_rejected_with_a_reason(arrays: dict[str, np.ndarray], words: str) -> None:
    with pytest.raises(WeightsRejected) as info:
        check_weights(dump_npz(arrays), EXPECTED, MB)
    assert words in str(info.value)


def test_pickles_and_non_npz_are_rejected() -> None:
    buf = io.BytesIO()
    np.savez(buf, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(WeightsRejected, match="non-numeric dtype"):
        check_weights(buf.getvalue(), None, MB)
    with pytest.raises(WeightsRejected, match="not an npz"):
        check_weights(b"not a zip", None, MB)


# --- vetting a result (unit) ------------------------------------------------------------


def _job(site: str, weights: bytes, n: int) -> JobTrack:
    job = JobTrack(f"j-{site}", "run-1", 1, site, state="done")
    blob, _ = make_blob(weights)
    job.result = JobResult(site=site, session=1, seq=1, job_id=job.job_id, n_samples=n,
                           weights=blob)  # fmt: skip
    job.weights = weights
    return job


def test_n_samples_above_the_registered_rows_is_excluded_else_clipped_and_flagged() -> None:
    spec = TrainSpec(task=TASK, max_samples=5000)
    raw = honest(1.0, 0)(1, None)[0]
    lying = _job("x", raw, 10**15)
    vet_result(lying, EXPECTED, spec, registered_rows=1000)
    assert not lying.ok and lying.answered
    assert lying.row()["state"] == "excluded"
    assert "n_samples 1000000000000000 exceeds the 1000 rows" in lying.row()["reason"]
    unknown = _job("y", raw, 10**15)
    vet_result(unknown, EXPECTED, spec, registered_rows=None)
    assert unknown.ok and unknown.samples == 5000
    assert "clipped to 5000" in unknown.row()["reason"]
    fair = _job("z", raw, 800)
    vet_result(fair, EXPECTED, spec, registered_rows=1000)
    assert fair.ok and fair.samples == 800 and fair.row()["reason"] is None


def test_first_round_excludes_weights_that_differ_from_what_most_results_agree_on() -> None:
    spec = TrainSpec(task=TASK)
    jobs = [_job(s, honest(1.0, 1)(1, None)[0], 10) for s in "ab"]
    jobs.append(_job("c", wrong_shape(1, None)[0], 10))
    for job in jobs:
        vet_result(job, None, spec, None)
    assert all(j.ok for j in jobs)  # nothing to compare with yet
    assert exclude_minority(jobs) == [jobs[2]]
    assert [j.ok for j in jobs] == [True, True, False]
    assert "(5, 3) float32, expected (4, 3) float32" in str(jobs[2].excluded)


# --- robust aggregation (unit) ----------------------------------------------------------


def test_one_outlier_cannot_move_the_median_or_trimmed_mean_far() -> None:
    rng = np.random.default_rng(0)
    sites = [{"w": (1.0 + 0.01 * rng.standard_normal(50)).astype(np.float32)} for _ in range(4)]
    outlier = {"w": np.full(50, 1e6, np.float32)}
    models = [(a, 100) for a in sites] + [(outlier, 10**6)]
    for method in ("median", "trimmed-mean"):
        out = aggregate(method, models, trim=0.2)["w"]
        assert np.abs(out - 1.0).max() < 0.05, method
    assert np.abs(aggregate("fedavg", models)["w"] - 1.0).min() > 1e5  # FedAvg is steered
    assert trim_count(3, 0.2) == 1 and trim_count(10, 0.2) == 2 and trim_count(2, 0.4) == 0


# --- the real path: serve + fedmq train + fake sites ------------------------------------


@dataclass
class Fed:
    broker: Broker
    prefix: str
    db: Path
    key: Path
    tmp: Path

    def site(self, name: str, answer: Any, rows: int | None = 1000, **kw: Any) -> FakeTrainer:
        site = f"{name.replace('_', '-')}-{uuid.uuid4().hex[:4]}"
        return FakeTrainer(self.broker.port, self.prefix, site, TASK, CODE_HASH, answer, rows,
                           **kw)  # fmt: skip

    def train(self, sites: list[FakeTrainer], *args: str) -> subprocess.CompletedProcess[str]:
        ids = [s.site for s in sites]
        wait_until(
            lambda: all(sites_json(self.db).get(s, {}).get("state") == "online" for s in ids),
            30, f"{ids} online", step=0.3,
        )  # fmt: skip
        return fedmq(
            "train", "--task", TASK, "--sites", ",".join(ids), "--round-timeout", "30",
            "--wait-sites", "20", "--rejoin-wait", "20", "--db", str(self.db), "--json", *args,
            timeout=120, check=False,
        )  # fmt: skip

    def read(self, *args: str) -> Any:
        return json.loads(fedmq(*args, "--db", str(self.db), "--json").stdout)


@pytest.fixture(scope="module")
def fed(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp = tmp_path_factory.mktemp("poison")
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp / "coord.key", tmp / "coord.pub")
    serve = Coordinator(tmp / "coord.db", broker.port, prefix,
                        ("--signing-key", str(tmp / "coord.key")))  # fmt: skip
    try:
        serve.start().wait_ready(60)
        yield Fed(broker, prefix, tmp / "coord.db", tmp / "coord.key", tmp)
    finally:
        serve.kill()


@pytest.fixture
def started() -> Iterator[Callable[[FakeTrainer], FakeTrainer]]:
    made: list[FakeTrainer] = []

    def start(site: FakeTrainer) -> FakeTrainer:
        made.append(site.start())
        return site

    yield start
    for site in made:
        site.stop()


def _events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _honest_mean(rounds: int) -> dict[str, np.ndarray]:
    """FedAvg of the two honest sites (delta 1 with 100 samples, 3 with 300) per round."""
    model = _initial()
    for _ in range(rounds):
        model = {k: v + np.float32(2.5) for k, v in model.items()}
    return model


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_poisoned_result_is_excluded_and_the_run_finishes_on_the_honest_sites(
    fed: Fed, started: Callable[[FakeTrainer], FakeTrainer], poison: str
) -> None:
    answer, words = POISONS[poison]
    a = started(fed.site("honest-a", honest(1.0, 100)))
    b = started(fed.site("honest-b", honest(3.0, 300)))
    # Its "done" comes after its result was excluded and the round closed without it.
    bad = started(fed.site(poison, answer, done_delay_s=2.0))
    proc = fed.train([a, b, bad], "--rounds", "2", "--min-sites", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = _events(proc.stdout)
    run_id = events[0]["run_id"]
    assert events[-1]["event"] == "run_finished" and events[-1]["state"] == "done"
    run = fed.read("run", run_id)
    assert run["state"] == "done"
    assert [r["state"] for r in run["rounds"]] == ["aggregated", "aggregated"]
    assert [r["n_results"] for r in run["rounds"]] == [2, 2]
    last = next(j for j in fed.read("jobs", "--run", run_id) if j["site"] == bad.site
                and j["round"] == 2)["job_id"]  # fmt: skip
    db = TrainDb(fed.db)
    try:
        stored = lambda: [json.loads(r["payload"]).get("state") for r in db.job_messages([last])]  # noqa: E731
        wait_until(lambda: "done" in stored(), 30, "the late done status")
    finally:
        db.close()
    jobs = {(j["site"], j["round"]): j for j in fed.read("jobs", "--run", run_id)}
    for rnd in (1, 2):
        job = jobs[(bad.site, rnd)]
        assert job["state"] == "excluded" and words[rnd - 1] in job["reason"], job
        assert f"{bad.site}: excluded (" in run["rounds"][rnd - 1]["reason"]
        assert jobs[(a.site, rnd)]["state"] == "done"
        excluded = [e for e in events if e["event"] == "job" and e["site"] == bad.site
                    and e["round"] == rnd and e["state"] == "excluded"]  # fmt: skip
        assert excluded and words[rnd - 1] in excluded[-1]["reason"]
    text = fedmq("jobs", "--run", run_id, "--db", str(fed.db)).stdout
    assert f"excluded at site {bad.site}" in text
    out = fed.tmp / f"{run_id}.npz"
    fedmq("models", "export", f"{run_id}-r2", "--out", str(out), "--db", str(fed.db))
    model = load_npz(out.read_bytes())
    for name, want in _honest_mean(2).items():
        np.testing.assert_allclose(model[name], want, rtol=1e-6)


def test_median_keeps_the_model_near_the_honest_sites(
    fed: Fed, started: Callable[[FakeTrainer], FakeTrainer]
) -> None:
    """A well-formed but far-off update claiming many samples: FedAvg would follow it."""
    sites = [started(fed.site(f"h{i}", honest(1.0 + 0.1 * i, 100))) for i in range(3)]
    sites.append(started(fed.site("outlier", honest(1e6, 1000))))
    proc = fed.train(sites, "--rounds", "1", "--min-sites", "3", "--aggregate", "median")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = _events(proc.stdout)[0]["run_id"]
    run = fed.read("run", run_id)
    assert run["aggregate"] == "median" and run["rounds"][0]["n_results"] == 4
    assert "/median" in fedmq("run", run_id, "--db", str(fed.db)).stdout
    out = fed.tmp / f"{run_id}.npz"
    fedmq("models", "export", f"{run_id}-r1", "--out", str(out), "--db", str(fed.db))
    model = load_npz(out.read_bytes())
    assert np.allclose(model["w"], 1.15) and np.allclose(model["b"], 1.15)


def test_an_error_in_the_round_driver_marks_the_run_failed_with_the_reason(
    broker: Broker,
    tmp_path: Path,
    started: Callable[[FakeTrainer], FakeTrainer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """serve embedded in this process (to break its round driver), submitted through its
    control API by the real client: the run is stored failed with the error's reason."""
    import threading

    from coordinator.api.client import ApiClient
    from coordinator.api.token import read_token, token_path
    from coordinator.cli.serve import run as serve_run
    from coordinator.settings import CoordinatorSettings
    from coordinator.training import driver as training
    from fedmq_runtime.settings import MqttSettings

    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(training, "close_round", boom)
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    db = tmp_path / "c.db"
    settings = CoordinatorSettings(
        db=db, signing_key_file=tmp_path / "k.key", client_id="coord-boom",
        mqtt=MqttSettings(port=broker.port, prefix=prefix),
    )  # fmt: skip
    stop = threading.Event()
    daemon = threading.Thread(
        target=serve_run, args=(settings, stop), kwargs={"http": "127.0.0.1:0"}
    )
    daemon.start()
    try:
        fed = Fed(broker, prefix, db, tmp_path / "k.key", tmp_path)
        sites = [started(fed.site(f"e{i}", honest(1.0, 100))) for i in range(2)]
        ready = lambda: db.exists() and fedmq("sites", "--db", str(db), check=False).returncode == 0  # noqa: E731
        wait_until(ready, 30, "serve ready")
        wait_until(
            lambda: all(sites_json(db).get(s.site, {}).get("state") == "online" for s in sites),
            30, "sites online", step=0.3,
        )  # fmt: skip
        wait_until(lambda: read_token(token_path(db)) is not None, 10, "token file")
        client = ApiClient(_api_url(db), read_token(token_path(db)))
        spec = TrainSpec(task=TASK, rounds=1, min_sites=2, sites=tuple(s.site for s in sites),
                         round_timeout_s=30, wait_sites_s=20)  # fmt: skip
        started_at = time.monotonic()
        run_id = client.submit(spec.to_json())
        outcome = wait_until(lambda: client.events(run_id, 0, wait=1.0)["outcome"], 60, "run end")
        assert time.monotonic() - started_at < 60
        assert outcome["state"] == "failed" and "RuntimeError: disk on fire" in outcome["reason"]
        assert outcome["exit_code"] == 5
        tdb = TrainDb(db)
        try:
            run = tdb.run(run_id)
            assert run is not None and run["state"] == "failed"
            assert "disk on fire" in run["reason"] and run["finished_at"]
            assert [r["state"] for r in tdb.rounds(run_id)] == ["failed"]
        finally:
            tdb.close()
    finally:
        stop.set()
        daemon.join(30)


def _api_url(db: Path) -> str:
    import sqlite3

    conn = sqlite3.connect(str(db))
    try:
        return str(conn.execute("SELECT value FROM meta WHERE key = 'api_url'").fetchone()[0])
    finally:
        conn.close()
