"""Federated evaluation end to end: real Mosquitto, a real ``fedmq serve``, three real
``fedmq-site run`` processes (syft) training ``ai4i-failure`` with the FedAdam server
strategy, one of them on a share without a single failure (its validation split has no
positive, so it cannot compute AUC). ``fedmq train --final-eval`` then ``fedmq run ID``
(JSON and text) show, per round, the global model scored by each site and weighted by
samples with its coverage, the missing AUC with its reason, and the final evaluation.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.admin.signing import generate_keypair
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, sites_json, wait_until
from tests.helpers.data import AI4I_CSV
from tests.helpers.db import query
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
