"""Federated evaluation end to end: real Mosquitto, a real ``fedmq serve``, three real
``fedmq-site run`` processes (syft) training ``ai4i-failure`` with the FedAdam server
strategy, one of them on a share without a single failure (its validation split has no
positive, so it cannot compute AUC). ``fedmq train --final-eval`` then ``fedmq run ID``
(JSON and text) show, per round, the global model scored by each site and weighted by
samples with its coverage, the missing AUC with its reason, and the final evaluation.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.admin.signing import generate_keypair
from coordinator.training.aggregate import dump_npz
from schemas import JobResult, JobStatus, make_blob
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, sites_json, wait_until
from tests.helpers.data import AI4I_CSV
from tests.helpers.db import query
from tests.helpers.fake_trainer import FakeTrainer
from tests.helpers.site_proc import SiteProc, site_settings

TASK = "ai4i-failure"
pytestmark = [pytest.mark.train, pytest.mark.slow]
# Rows (by UDI) of each site's share; site c keeps only rows without a failure.
SHARES = {"a": (1, 2000), "b": (2001, 4000), "c": (4001, 6000)}
NO_POSITIVES = "c"


@dataclass
class Fed:
    db: Path
    sites: dict[str, SiteProc]
    rows: dict[str, int]


def _share(out: Path, first: int, last: int, no_failures: bool) -> int:
    import pandas as pd

    table = pd.read_csv(AI4I_CSV, encoding="utf-8-sig")
    table = table[(table["UDI"] >= first) & (table["UDI"] <= last)]
    if no_failures:
        table = table[table["Machine failure"] == 0]
    table.to_csv(out, index=False)
    return len(table)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp = tmp_path_factory.mktemp("fedeval")
    broker = Broker(tmp)
    broker.start()
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp / "coord.key", tmp / "coord.pub")
    db = tmp / "coord.db"
    serve = Coordinator(db, broker.port, prefix, ("--signing-key", str(tmp / "coord.key")))
    sites: dict[str, SiteProc] = {}
    rows: dict[str, int] = {}
    try:
        serve.start().wait_ready(60)
        for site_id, (first, last) in SHARES.items():
            data = tmp / f"ai4i-{site_id}.csv"
            rows[site_id] = _share(data, first, last, site_id == NO_POSITIVES)
            training = {
                "allow": [TASK], "approval": "auto",
                "datasets": [{"name": f"ai4i-{site_id}", "task": TASK, "paths": [str(data)],
                              "params": {}}],
            }  # fmt: skip
            settings = site_settings(
                tmp, broker.port, prefix, site_id=site_id, devices=[], training=training,
                coordinator_public_key_file=str(tmp / "coord.pub"),
            )  # fmt: skip
            sites[site_id] = SiteProc(tmp / site_id, settings).start()

        def ready() -> bool:
            found = sites_json(db)
            return all(
                found.get(s, {}).get("state") == "online" and TASK in found[s]["tasks"]
                for s in SHARES
            )

        wait_until(ready, 240, f"sites {list(SHARES)} online with {TASK}", step=1.0)
        yield Fed(db, sites, rows)
    finally:
        for proc in sites.values():
            proc.kill()
        serve.kill()
        broker.kill()


def _events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _weighted(evaluation: dict[str, Any], metric: str) -> float:
    pairs = [
        (site["values"][metric], site["n_samples"])
        for site in evaluation["sites"].values()
        if metric in site["values"]
    ]
    return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)


def _check_evaluation(ev: dict[str, Any], rows: dict[str, int]) -> None:
    """Per site and weighted; c's AUC missing with its reason; coverage 2 of 3."""
    assert set(ev["sites"]) == set(SHARES)
    for site_id, site in ev["sites"].items():
        assert site["error"] is None, site
        # ai4i's validation split: 20% of the site's rows
        assert site["n_samples"] == round(rows[site_id] * 0.2), (site_id, site)
        assert site["values"]["loss"] > 0
    for site_id in ("a", "b"):
        values = ev["sites"][site_id]["values"]
        assert 0 <= values["auc"] <= 1 and 0 <= values["f1"] <= 1 and 0 < values["pr_auc"] <= 1
    c = ev["sites"]["c"]
    # Without positives F1 is 0 with false alarms, a reason without any.
    assert 0 <= c["values"].get("f1", 0) <= 1
    assert c["missing"].get("f1", "no positives").startswith("no positives")
    assert c["missing"]["pr_auc"] == f"no positives in the validation split (0 of {c['n_samples']})"
    n_c = ev["sites"]["c"]["n_samples"]
    reason = f"one class only in the validation split (0 positives of {n_c})"
    assert ev["sites"]["c"]["missing"]["auc"] == reason
    assert "auc" not in ev["sites"]["c"]["values"]
    auc = ev["metrics"]["auc"]
    assert (auc["sites"], auc["of_sites"], auc["weighting"]) == (2, 3, "samples")
    assert auc["missing"] == {"c": reason}
    assert auc["value"] == pytest.approx(_weighted(ev, "auc"))
    assert auc["n_samples"] == ev["sites"]["a"]["n_samples"] + ev["sites"]["b"]["n_samples"]
    loss = ev["metrics"]["loss"]
    assert (loss["sites"], loss["of_sites"]) == (3, 3)
    assert loss["value"] == pytest.approx(_weighted(ev, "loss"))


def test_run_shows_federated_evaluation_per_site_weighted_and_final(fed: Fed) -> None:
    proc = fedmq(
        "train", "--task", TASK, "--rounds", "2", "--min-sites", "3", "--sites", "a,b,c",
        "--epochs", "1", "--round-timeout", "240", "--strategy", "fedadam",
        "--server-lr", "0.01", "--final-eval", "--db", str(fed.db), "--json",
        timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = _events(proc.stdout)
    run_id = events[0]["run_id"]
    assert events[-1]["event"] == "run_finished" and events[-1]["state"] == "done"
    closed = {e["round"]: e for e in events if e["event"] == "round_closed"}
    assert closed[1]["evaluation"] is None  # round 1 received no global model
    assert closed[2]["evaluation"]["model_id"] == f"{run_id}-r1"
    [final_event] = [e for e in events if e["event"] == "evaluation_closed"]
    assert final_event["model_id"] == f"{run_id}-r2" and final_event["n_results"] == 3

    run = json.loads(fedmq("run", run_id, "--db", str(fed.db), "--json").stdout)
    assert run["strategy"] == "fedadam" and run["spec"]["server_lr"] == 0.01
    r1, r2 = run["rounds"]
    assert [r1["state"], r2["state"]] == ["aggregated", "aggregated"]
    first = r1["evaluation"]
    assert (first["model_id"], first["round"], first["final"]) == (f"{run_id}-r1", 2, False)
    _check_evaluation(first, fed.rows)
    # What the run's event said is what was stored.
    assert closed[2]["evaluation"]["metrics"] == first["metrics"]
    assert closed[2]["evaluation"]["sites"] == first["sites"]
    final = run["final_evaluation"]
    assert final == r2["evaluation"]
    assert (final["model_id"], final["round"], final["final"]) == (f"{run_id}-r2", 3, True)
    _check_evaluation(final, fed.rows)

    # FedAdam ran on the server: its moments were stored after round 2 (round 1 has no
    # global model to step from).
    states = query(fed.db, "SELECT round, strategy FROM strategy_state WHERE run_id = ?", run_id)
    assert states == [(2, "fedadam")]

    jobs = json.loads(fedmq("jobs", "--run", run_id, "--db", str(fed.db), "--json").stdout)
    assert sorted((j["round"], j["site"]) for j in jobs) == sorted(
        (rnd, s) for rnd in (1, 2, 3) for s in SHARES
    )
    assert all(j["state"] == "done" for j in jobs)
    assert {j["n_samples"] for j in jobs if j["round"] == 3} == {0}  # evaluate-only

    text = fedmq("run", run_id, "--db", str(fed.db)).stdout
    assert "federated evaluation of the global model" in text
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("MODEL"))
    assert header.split() == ["MODEL", "MEASURED", "METRIC", "WEIGHTED", "COVERAGE", "a", "b", "c"]
    auc_r1 = next(ln for ln in lines if ln.split()[:4] == ["r1", "round", "2", "auc"])
    assert "2 of 3" in auc_r1 and auc_r1.split()[-1] == "missing"
    assert f"{first['metrics']['auc']['value']:.4g}" in auc_r1
    auc_final = next(ln for ln in lines if ln.split()[:4] == ["r2", "final", "eval", "auc"])
    assert "2 of 3" in auc_final
    n_c = first["sites"]["c"]["n_samples"]
    assert f"r1 auc at c: one class only in the validation split (0 positives of {n_c})" in text


def test_train_text_output_prints_the_federated_evaluation(fed: Fed) -> None:
    proc = subprocess.run(
        [*_fedmq_cmd(), "train", "--task", TASK, "--rounds", "2", "--min-sites", "3",
         "--sites", "a,b,c", "--epochs", "1", "--round-timeout", "240", "--db", str(fed.db)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "round 2 aggregated: 3 results" in out
    line = next(ln for ln in out.splitlines() if "federated eval of" in ln)
    assert "-r1: auc=" in line and "(2 of 3 sites)" in line and "loss=" in line
    assert "final evaluation" not in out  # only with --final-eval


def _fedmq_cmd() -> list[str]:
    from tests.helpers.coord_proc import FEDMQ

    return list(FEDMQ)


# --- the coordinator's side with protocol-level sites: vetting through the real daemon ---


class _EvalSite(FakeTrainer):
    """A fake site that also reports an evaluation of the global model it was sent:
    ``scores(evaluated sha256) -> JobResult global_* fields`` (None: reports none, as a
    site that predates federated evaluation)."""

    def __init__(self, *args: Any, scores: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.scores = scores
        self.evaluate_only: list[bool] = []

    def _train(self, cmd: Any) -> None:
        self.jobs.append(cmd.job_id)
        self.evaluate_only.append(bool(cmd.evaluate_only))
        glob, sha = None, None
        if cmd.weights is not None:
            raw = cmd.weights.inline_bytes()
            sha = hashlib.sha256(raw).hexdigest()
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                glob = {k: z[k] for k in z.files}
        weights, n = self.answer(cmd.round, glob)
        job = {"job_id": cmd.job_id, "run_id": cmd.run_id, "round": cmd.round}
        topic = self.t.job_result(self.site, cmd.job_id)
        extra = self.scores(sha) if sha is not None and self.scores is not None else {}
        blob = None if cmd.evaluate_only else make_blob(weights, self.chunk_bytes)[0]
        self._publish(topic, JobResult(**self._next(), **job, n_samples=0 if blob is None else n,
                                       metrics={"rmse": 1.0}, weights=blob, **extra))  # fmt: skip
        self._publish(self.t.job_status(self.site, cmd.job_id),
                      JobStatus(**self._next(), **job, state="done"))  # fmt: skip


def _toy(rnd: int, glob: dict[str, np.ndarray] | None) -> tuple[bytes, int]:
    base = glob if glob is not None else {"w": np.zeros(4, np.float32)}
    return dump_npz({k: v + np.float32(1.0) for k, v in base.items()}), 100


def test_one_bad_site_cannot_poison_the_federated_numbers(broker: Broker, tmp_path: Path) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp_path / "coord.key", tmp_path / "coord.pub")
    db = tmp_path / "coord.db"
    serve = Coordinator(db, broker.port, prefix, ("--signing-key", str(tmp_path / "coord.key")))

    def honest(auc: float, n: int) -> Any:
        return lambda sha: {"global_sha256": sha, "global_n_samples": n,
                            "global_metrics": {"auc": auc, "loss": 0.5}}  # fmt: skip

    def liar(sha: str) -> dict[str, Any]:  # claims more samples than it has rows
        return {"global_sha256": sha, "global_n_samples": 10**6, "global_metrics": {"auc": 1.0}}

    def wrong_model(sha: str) -> dict[str, Any]:
        return {"global_sha256": "0" * 64, "global_n_samples": 50, "global_metrics": {"auc": 0.0}}

    plan = {"h1": honest(0.8, 100), "h2": honest(0.6, 300), "liar": liar,
            "other": wrong_model, "old": None}  # fmt: skip
    sites = {
        name: _EvalSite(broker.port, prefix, name, "toy", "c" * 64, _toy, 1000, scores=scores)
        for name, scores in plan.items()
    }
    try:
        serve.start().wait_ready(60)
        for site in sites.values():
            site.start()
        wait_until(lambda: all(sites_json(db).get(s, {}).get("state") == "online"
                               for s in sites), 30, "fake sites online", step=0.3)  # fmt: skip
        proc = fedmq(
            "train", "--task", "toy", "--sites", ",".join(sites), "--rounds", "2",
            "--min-sites", "5", "--round-timeout", "30", "--strategy", "fedyogi",
            "--final-eval", "--db", str(db), "--json", timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_id = _events(proc.stdout)[0]["run_id"]
        run = json.loads(fedmq("run", run_id, "--db", str(db), "--json").stdout)
    finally:
        for site in sites.values():
            site.stop()
        serve.kill()
    assert all(s.evaluate_only == [False, False, True] for s in sites.values())
    for ev in (run["rounds"][0]["evaluation"], run["final_evaluation"]):
        auc = ev["metrics"]["auc"]
        assert auc["value"] == pytest.approx((0.8 * 100 + 0.6 * 300) / 400)
        assert (auc["sites"], auc["of_sites"], auc["n_samples"]) == (2, 5, 400)
        errors = {s: info["error"] for s, info in ev["sites"].items()}
        assert errors["h1"] is None and errors["h2"] is None
        assert "exceeds the 1000 rows the site registered for toy" in errors["liar"]
        assert "evaluated another model" in errors["other"]
        assert "reported no evaluation" in errors["old"]
        assert set(auc["missing"]) == {"liar", "other", "old"}
    assert run["final_evaluation"]["final"] and run["rounds"][1]["evaluation"]["final"]
    states = query(db, "SELECT round, strategy FROM strategy_state WHERE run_id = ?", run_id)
    assert states == [(2, "fedyogi")]
