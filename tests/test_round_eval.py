"""Federated evaluation, unit level: the site's job body and reporter (scores of the global
model into the result's ``global_*`` fields), the coordinator's vetting of them (one bad
site cannot poison the numbers), the sample-weighted summary with its coverage, and what
is stored and read back (``fedmq run`` JSON and text) from a real SQLite file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from coordinator.store import SqliteStore
from coordinator.store.training import TrainDb
from coordinator.training.events import TrainSpec
from coordinator.training.inbox import JobTrack
from coordinator.training.round import federated_summary, record_evaluation
from coordinator.training.vet import EVAL_MAX_METRICS, SiteEval, vet_evaluation
from schemas import JobResult

SHA = hashlib.sha256(b"global model").hexdigest()
SPEC = TrainSpec(task="ai4i-failure", max_samples=1000)


def _result(**fields: Any) -> JobResult:
    base = {"site": "a", "session": 1, "seq": 1, "job_id": "j-a", "n_samples": 10}
    return JobResult(**{**base, **fields})


def _job(site: str = "a", **fields: Any) -> JobTrack:
    job = JobTrack(f"j-{site}", "run-x", 2, site, state="done")
    job.result = _result(site=site, job_id=f"j-{site}", **fields)
    return job


def _eval(**fields: Any) -> SiteEval:
    return vet_evaluation(_job(**fields), SHA, SPEC, 500)


# -- weighting and coverage -------------------------------------------------------------


def test_weighted_by_held_out_samples_over_the_sites_that_computed_it() -> None:
    evals = [
        SiteEval("a", "ja", {"auc": 0.9, "f1": 0.5}, {}, 100),
        SiteEval("b", "jb", {"auc": 0.6, "f1": 0.2}, {}, 300),
        SiteEval("c", "jc", {"f1": 0.8}, {"auc": "one class only (0 positives of 50)"}, 50),
        SiteEval("d", "jd", error="no result (failed: out of memory)"),
    ]
    rows = {r["metric"]: r for r in federated_summary(evals)}
    auc, f1 = rows["auc"], rows["f1"]
    assert auc["value"] == pytest.approx((0.9 * 100 + 0.6 * 300) / 400)
    assert (auc["sites"], auc["of_sites"], auc["n_samples"]) == (2, 4, 400)
    assert auc["weighting"] == "samples"
    assert auc["missing"] == {"c": "one class only (0 positives of 50)",
                              "d": "no result (failed: out of memory)"}  # fmt: skip
    assert f1["value"] == pytest.approx((0.5 * 100 + 0.2 * 300 + 0.8 * 50) / 450)
    assert (f1["sites"], f1["of_sites"]) == (3, 4)
    assert f1["missing"] == {"d": "no result (failed: out of memory)"}


def test_plain_mean_when_a_covering_site_did_not_say_how_many_samples() -> None:
    evals = [SiteEval("a", "ja", {"rmse": 10.0}, {}, 100), SiteEval("b", "jb", {"rmse": 20.0})]
    [row] = federated_summary(evals, asked=3)
    assert row["value"] == 15.0 and row["weighting"] == "sites" and row["n_samples"] is None
    assert (row["sites"], row["of_sites"]) == (2, 3)


def test_a_metric_no_site_could_compute_has_no_value_and_every_reason() -> None:
    evals = [SiteEval("a", "ja", {}, {"auc": "one class only"}, 5)]
    [row] = federated_summary(evals)
    assert row["value"] is None and row["sites"] == 0 and row["missing"] == {"a": "one class only"}


# -- vetting ------------------------------------------------------------------------------


def test_an_honest_evaluation_passes_with_reasons_kept() -> None:
    e = _eval(global_sha256=SHA, global_n_samples=40, global_metrics={"auc": 0.8, "loss": 0.3},
              global_missing={"pr_auc": "no positives (0 of 40)"})  # fmt: skip
    assert e.error is None and e.n_samples == 40
    assert e.values == {"auc": 0.8, "loss": 0.3}
    assert e.missing == {"pr_auc": "no positives (0 of 40)"}
    assert {r["metric"] for r in e.rows()} == {"auc", "loss", "pr_auc"}


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({}, "reported no evaluation"),
        ({"global_sha256": "0" * 64, "global_metrics": {"auc": 0.9}}, "evaluated another model"),
        ({"global_sha256": SHA, "global_error": "evaluate failed: KeyError: 'x'"},
         "evaluation failed at the site: evaluate failed: KeyError"),
        ({"global_sha256": SHA, "global_n_samples": 501, "global_metrics": {"auc": 0.9}},
         "exceeds the 500 rows"),
        ({"global_sha256": SHA, "global_n_samples": 0, "global_metrics": {"auc": 0.9}},
         "0 held-out samples"),
        ({"global_sha256": SHA, "global_metrics": {f"m{i}": 0.1 for i in range(33)}},
         f"at most {EVAL_MAX_METRICS}"),
        ({"global_sha256": SHA, "global_metrics": {"bad name; drop": 0.1}}, "malformed metric"),
    ],
)  # fmt: skip
def test_a_bad_evaluation_is_excluded_as_a_whole(fields: dict[str, Any], words: str) -> None:
    e = _eval(**fields)
    assert e.error is not None and words in e.error, e.error
    assert e.values == {} and [r["metric"] for r in e.rows()] == ["*"]


def test_bad_values_become_missing_and_cannot_move_the_mean() -> None:
    honest = _eval(global_sha256=SHA, global_n_samples=100,
                   global_metrics={"auc": 0.8, "rmse": 12.0})  # fmt: skip
    job = _job("b", global_sha256=SHA, global_n_samples=400, global_metrics={"auc": 37.0},
               global_missing={"f1": "x" * 480})  # fmt: skip
    # The schema refuses non-finite numbers; vetting does not rely on it.
    assert job.result is not None
    job.result = job.result.model_copy(
        update={"global_metrics": {"auc": 37.0, "rmse": float("inf")}}
    )
    bad = vet_evaluation(job, SHA, SPEC, 500)
    assert bad.values == {}
    assert "outside [0, 1]" in bad.missing["auc"] and "non-finite" in bad.missing["rmse"]
    assert len(bad.missing["f1"]) == 200  # reasons are length-capped
    rows = {r["metric"]: r for r in federated_summary([honest, bad])}
    assert rows["auc"]["value"] == 0.8 and rows["auc"]["sites"] == 1
    assert rows["rmse"]["value"] == 12.0
    neg = _eval(global_sha256=SHA, global_metrics={"rmse": -1.0, "custom": -5.0})
    assert "negative" in neg.missing["rmse"] and neg.values == {"custom": -5.0}


def test_sample_count_is_clipped_when_the_site_registered_no_rows() -> None:
    e = vet_evaluation(
        _job(global_sha256=SHA, global_n_samples=10**9, global_metrics={"auc": 0.5}), SHA,
        SPEC, None,
    )  # fmt: skip
    assert e.error is None and e.n_samples == SPEC.max_samples


def test_schema_bounds_the_fields_a_site_sends() -> None:
    with pytest.raises(ValueError):
        _result(global_metrics={f"m{i}": 0.1 for i in range(65)})
    with pytest.raises(ValueError):
        _result(global_missing={"auc": "x" * 501})
    with pytest.raises(ValueError):
        _result(global_sha256="not-a-sha")
    with pytest.raises(ValueError):
        _result(global_metrics={"auc": float("nan")})


# -- store and read back --------------------------------------------------------------------


def _stored_run(tmp_path: Path) -> Path:
    db = tmp_path / "c.db"
    SqliteStore(db).close()
    train = TrainDb(db)
    try:
        train.put_run({"run_id": "run-x", "task": SPEC.task, "strategy": "fedadam", "rounds": 2,
                       "min_sites": 2, "sites": json.dumps(["a", "b", "c"]), "state": "done",
                       "created_at": 5, "round_timeout_s": 60.0, "reason": ""})  # fmt: skip
        for rnd in (1, 2):
            train.put_round("run-x", rnd, state="aggregated", model_id=f"run-x-r{rnd}",
                            selected=["a", "b", "c"], n_results=3)  # fmt: skip
        jobs = {
            "a": _job("a", global_sha256=SHA, global_n_samples=100,
                      global_metrics={"auc": 0.9, "f1": 0.5}),
            "b": _job("b", global_sha256=SHA, global_n_samples=300,
                      global_metrics={"auc": 0.6, "f1": 0.2}),
            "c": _job("c", global_sha256=SHA, global_n_samples=50, global_metrics={"f1": 0.8},
                      global_missing={"auc": "one class only in the validation split "
                                              "(0 positives of 50)"}),
        }  # fmt: skip
        # A first, partial evaluation of r1 (the round restarted) is replaced, not added.
        record_evaluation(train, SPEC, "run-x", 2, "run-x-r1", SHA, {"a": jobs["a"]})
        summary = record_evaluation(train, SPEC, "run-x", 2, "run-x-r1", SHA, jobs)
        assert summary["metrics"]["auc"]["sites"] == 2 and summary["asked"] == 3
        lost = JobTrack("j-c2", "run-x", 3, "c", state="sent")
        final = {"a": jobs["a"], "b": jobs["b"], "c": lost}
        record_evaluation(train, SPEC, "run-x", 3, "run-x-r2", SHA, final, final=True)
    finally:
        train.close()
    return db


def test_evaluations_are_stored_per_site_and_weighted_and_read_back(tmp_path: Path) -> None:
    from coordinator.cli import cli

    db = _stored_run(tmp_path)
    runner = CliRunner()
    out = runner.invoke(cli, ["run", "run-x", "--db", str(db), "--json"])
    assert out.exit_code == 0, out.output
    detail = json.loads(out.output)
    r1, r2 = detail["rounds"]
    ev = r1["evaluation"]
    assert (ev["model_id"], ev["round"], ev["final"]) == ("run-x-r1", 2, False)
    auc = ev["metrics"]["auc"]
    assert auc["value"] == pytest.approx(0.675) and (auc["sites"], auc["of_sites"]) == (2, 3)
    assert auc["n_samples"] == 400 and auc["weighting"] == "samples"
    assert auc["missing"] == {"c": "one class only in the validation split (0 positives of 50)"}
    assert ev["sites"]["a"] == {"n_samples": 100, "values": {"auc": 0.9, "f1": 0.5},
                                "missing": {}, "error": None}  # fmt: skip
    assert ev["sites"]["c"]["missing"] == {"auc": auc["missing"]["c"]}
    final = detail["final_evaluation"]
    assert final == r2["evaluation"] and final["final"] and final["round"] == 3
    assert final["metrics"]["f1"]["of_sites"] == 3 and final["metrics"]["f1"]["sites"] == 2
    assert final["sites"]["c"]["error"] == "no result (sent)"
    assert [e["model_id"] for e in detail["evaluations"]] == ["run-x-r1", "run-x-r2"]

    text = runner.invoke(cli, ["run", "run-x", "--db", str(db)]).output
    assert "federated evaluation of the global model" in text
    line = next(ln for ln in text.splitlines() if ln.split()[:3] == ["r1", "round", "2"]
                and "auc" in ln.split())  # fmt: skip
    assert "0.675" in line and "2 of 3" in line and "missing" in line
    assert "r1 auc at c: one class only in the validation split (0 positives of 50)" in text
    assert "r2 at c: no result (sent)" in text
    assert any(ln.startswith("r2") and "final eval" in ln for ln in text.splitlines())


def test_a_database_without_evaluations_reads_as_before(tmp_path: Path) -> None:
    import sqlite3

    from coordinator.store.training_read import evaluations

    db = tmp_path / "c.db"
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    assert evaluations(conn, "nope") == []  # no training tables at all
    conn.close()


# -- the site's side: job body and reporter ------------------------------------------------


class _Data:
    def __init__(self, n_val: int) -> None:
        self.y_val = np.zeros(n_val)


class _Task:
    code_hash = "h" * 64

    def __init__(self, scores: Any) -> None:
        self.scores, self.trained = scores, 0

    def load_dataset(self, table: Any, params: Any) -> _Data:
        return _Data(40)

    def evaluate(self, weights: bytes, data: Any) -> Any:
        if isinstance(self.scores, Exception):
            raise self.scores
        return self.scores

    def train(self, weights: Any, data: Any, hp: Any, progress: Any) -> Any:
        assert "evaluate_only" not in hp
        self.trained += 1
        return b"new", 32, {"loss": 0.5}


def _spec_file(tmp_path: Path, weights: bytes | None, **hp: Any) -> str:
    path = None
    if weights is not None:
        path = tmp_path / "global.npz"
        path.write_bytes(weights)
    return json.dumps({
        "job_id": "j1", "task": "fake", "code_hash": "h" * 64, "load_params": {},
        "hyperparams": hp, "weights_file": str(path) if path else None,
        "weights_sha256": hashlib.sha256(weights).hexdigest() if weights else None,
    })  # fmt: skip


@pytest.fixture
def fake_task(monkeypatch: pytest.MonkeyPatch) -> Any:
    import site_node.training.tasks as tasks

    holder: dict[str, _Task] = {}
    monkeypatch.setattr(tasks, "get_task", lambda name, **kw: holder["task"])
    return holder


def test_job_body_scores_the_global_model_before_training(tmp_path: Path, fake_task: Any) -> None:
    from site_node.training.job_body import EVAL_KEY, eval_fields, execute_job

    task = fake_task["task"] = _Task({"auc": "one class only (0 positives of 40)", "f1": 0.25,
                                      "loss": float("nan")})  # fmt: skip
    out = execute_job(_spec_file(tmp_path, b"global", round=1), None)
    assert out["weights"] == b"new" and out["n_samples"] == 32 and task.trained == 1
    fields = eval_fields(out["metrics"][EVAL_KEY])
    assert fields == {
        "global_sha256": hashlib.sha256(b"global").hexdigest(),
        "global_n_samples": 40,
        "global_metrics": {"f1": 0.25},
        "global_missing": {"auc": "one class only (0 positives of 40)",
                           "loss": "not a finite number (nan)"},
    }  # fmt: skip
    assert out["metrics"]["loss"] == 0.5
    # Round 1: no global model, nothing to evaluate.
    out = execute_job(_spec_file(tmp_path, None), None)
    assert EVAL_KEY not in out["metrics"]


def test_evaluate_only_job_trains_nothing_and_a_failing_evaluate_is_reported(
    tmp_path: Path, fake_task: Any
) -> None:
    from site_node.training.job_body import EVAL_KEY, eval_fields, execute_job

    task = fake_task["task"] = _Task({"rmse": 12.5})
    out = execute_job(_spec_file(tmp_path, b"final", evaluate_only=True), None)
    assert task.trained == 0 and out["weights"] == b"" and out["n_samples"] == 0
    assert eval_fields(out["metrics"][EVAL_KEY])["global_metrics"] == {"rmse": 12.5}
    out = execute_job(_spec_file(tmp_path, None, evaluate_only=True), None)
    assert "needs the global model" in out["error"]
    fake_task["task"] = _Task(RuntimeError("model does not fit"))
    out = execute_job(_spec_file(tmp_path, b"global"), None)
    fields = eval_fields(out["metrics"][EVAL_KEY])
    assert fields["global_error"] == "evaluate failed: RuntimeError: model does not fit"
    assert out["weights"] == b"new"  # the job's training still counts


def test_reporter_sends_the_evaluation_as_result_fields(tmp_path: Path) -> None:
    from schemas import Topics
    from site_node.training.job_body import EVAL_KEY
    from site_node.training.jobs.reporter import JobRef, JobReporter

    sent: list[Any] = []

    class Daemon:
        site_id, session, topics = "a", 1, Topics("p/fedmq/v1")

        def send_durable(self, kind: str, topic: str, build: Any) -> None:
            sent.append(build(len(sent) + 1))

    rep = JobReporter(Daemon(), 1024)  # type: ignore[arg-type]
    evaluation = {"sha256": SHA, "n_samples": 40, "metrics": {"rmse": 3.0},
                  "missing": {"mae": "why"}}  # fmt: skip
    n = rep.result(JobRef("j1", "r", 2, "t"), b"", 0, {EVAL_KEY: evaluation}, 0.5)  # type: ignore[dict-item]
    [result] = sent
    assert n == 0 and result.weights is None and result.metrics == {}
    assert (result.global_sha256, result.global_n_samples) == (SHA, 40)
    assert result.global_metrics == {"rmse": 3.0} and result.global_missing == {"mae": "why"}
    sent.clear()
    rep.result(JobRef("j2"), b"w" * 10, 10, {"loss": 0.1}, 0.5)
    assert sent[0].weights is not None and sent[0].global_sha256 is None


# -- the demo's learning curve --------------------------------------------------------------


def test_demo_rows_take_the_global_models_federated_rmse_not_the_sites_own() -> None:
    from coordinator.demo.training import RoundProgress
    from coordinator.training.events import EvaluationClosed, RoundClosed

    lines: list[str] = []

    class Console:
        def line(self, text: str) -> None:
            lines.append(text)

        def status(self, text: str, key: str = "") -> None:
            pass

    def ev(model: str, rmse: float) -> dict[str, Any]:
        return {"model_id": model, "metrics": {"rmse": {"value": rmse, "sites": 2, "of_sites": 3}}}

    progress = RoundProgress(Console(), 2)  # type: ignore[arg-type]
    own = {"rmse": 99.0}  # what the sites measured after training locally: never shown
    progress(RoundClosed("run-x", 1, "aggregated", 3, own, model_id="run-x-r1"))
    assert progress.rows[0].val_rmse is None  # not measured yet
    progress(RoundClosed("run-x", 2, "aggregated", 3, own, model_id="run-x-r2",
                         evaluation=ev("run-x-r1", 20.5)))  # fmt: skip
    progress(EvaluationClosed("run-x", 3, "run-x-r2", 3, ev("run-x-r2", 17.25)))
    assert [(r.round, r.val_rmse) for r in progress.rows] == [(1, 20.5), (2, 17.25)]
    assert "  round 2's global model: federated val RMSE 17.25 (2 of 3 sites)" in lines
