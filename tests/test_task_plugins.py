"""Acceptance (issue 13): a task written by the test into a tmp folder outside the repository
is listed, allow-listed by hash at three real ``fedmq-site run`` processes (syft datasites,
the training worker) and trained for two rounds by ``fedmq train`` through a real
``fedmq serve`` and Mosquitto; editing one byte of it makes the sites refuse the next job
with both hashes in the reason.

The task is numpy only (a linear model), so the rounds take seconds; syft starts in
5-25 s per site.
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
from site_node.training.tasks import get_task
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import REPO, Coordinator, fedmq, sites_json, wait_until
from tests.helpers.site_proc import SITE_BIN, SiteProc, site_settings

pytestmark = [pytest.mark.train, pytest.mark.slow]

NAME = "plug-linear"
SITES = ("a", "b", "c")

TASK = '''\
"""A linear model y ~ x1, x2 on a CSV, in numpy (a test task)."""

import io

import numpy as np

NAME = "plug-linear"
VERSION = "0.1"
DEFAULTS = {"epochs": 20, "lr": 0.1, "batch_size": 32, "seed": 0}
METRICS = {"mse": "min", "mae": "min"}
PRIMARY_METRIC = "mse"
OUTPUTS = {"y": ""}
WINDOW = 1


def read_table(paths, params):
    import pandas as pd

    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def load_dataset(table, params):
    n_val = len(table) // 5  # the last rows (by time) validate
    x = table[["x1", "x2"]].to_numpy(np.float64)
    y = table["y"].to_numpy(np.float64)
    return x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]


def _save(w):
    buf = io.BytesIO()
    np.savez(buf, w=w)
    return buf.getvalue()


def _load(raw):
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        return npz["w"].copy()


def initial_weights(seed=0):
    return _save(np.random.default_rng(seed).normal(0, 0.1, 3))


def _scores(w, x, y):
    err = x @ w[:2] + w[2] - y
    return {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}


def train(weights, data, hp, progress=None):
    x, y, xv, yv = data
    w = _load(weights if weights is not None else initial_weights(int(hp.get("seed", 0))))
    for _ in range(int(hp.get("epochs", DEFAULTS["epochs"]))):
        err = x @ w[:2] + w[2] - y
        w -= DEFAULTS["lr"] * np.concatenate([x.T @ err / len(y), [err.mean()]])
    return _save(w), len(y), _scores(w, xv, yv)


def evaluate(weights, data):
    return _scores(_load(weights), data[2], data[3])


def predict(weights, window, params):
    w, s = _load(weights), window[-1]
    return {"y": float(w[0] * s["x1"] + w[1] * s["x2"] + w[2])}
'''


def _csv(path: Path, seed: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (200, 2))
    y = 2.0 * x[:, 0] - 1.0 * x[:, 1] + 0.5 + rng.normal(0, 0.05, 200)
    lines = ["x1,x2,y", *(f"{a:.5f},{b:.5f},{c:.5f}" for (a, b), c in zip(x, y, strict=True))]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Fed:
    db: Path
    sites: dict[str, SiteProc]
    tasks_dir: Path
    tmp: Path

    def train(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return fedmq("train", "--task", NAME, "--db", str(self.db), "--json", *args,
                     timeout=timeout, check=False)  # fmt: skip

    def read(self, *args: str) -> Any:
        return json.loads(fedmq(*args, "--db", str(self.db), "--json").stdout)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp = tmp_path_factory.mktemp("plugins")
    assert REPO not in tmp.resolve().parents  # the task lives outside the repository
    tasks_dir = tmp / "plant-tasks"
    tasks_dir.mkdir()
    (tasks_dir / "plug_linear.py").write_text(TASK)
    code_hash = get_task(NAME, tasks_dir).code_hash
    broker = Broker(tmp)
    broker.start()
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp / "coord.key", tmp / "coord.pub")
    db = tmp / "coord.db"
    serve = Coordinator(db, broker.port, prefix, ("--signing-key", str(tmp / "coord.key")))
    sites: dict[str, SiteProc] = {}
    try:
        serve.start().wait_ready(60)
        for i, site_id in enumerate(SITES):
            # Both pinned forms: a table and "name@hash".
            pin: Any = {"task": NAME, "hash": code_hash} if i == 0 else f"{NAME}@{code_hash}"
            training = {
                "tasks_dir": str(tasks_dir), "allow": [pin], "approval": "auto",
                "datasets": [{"name": f"lin-{site_id}", "task": NAME,
                              "paths": [str(_csv(tmp / f"{site_id}.csv", i))]}],
            }  # fmt: skip
            settings = site_settings(
                tmp, broker.port, prefix, site_id=site_id, devices=[], training=training,
                coordinator_public_key_file=str(tmp / "coord.pub"),
            )  # fmt: skip
            sites[site_id] = SiteProc(tmp / site_id, settings).start()

        def ready() -> bool:
            rows = sites_json(db)
            return all(
                rows.get(s, {}).get("state") == "online" and NAME in rows[s]["tasks"] for s in SITES
            )

        wait_until(ready, 240, f"sites online advertising {NAME}", step=1.0)
        yield Fed(db, sites, tasks_dir, tmp)
    finally:
        for proc in sites.values():
            proc.kill()
        serve.kill()
        broker.kill()


def _events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_folder_task_trains_two_rounds_then_an_edit_is_refused(fed: Fed) -> None:
    code_hash = get_task(NAME, fed.tasks_dir).code_hash
    # Listed at a site, pinned by its allow-list.
    listing = subprocess.run(
        [str(SITE_BIN), "tasks", "--config", str(fed.sites["a"].config), "--json"],
        capture_output=True, text=True, timeout=60, cwd=fed.sites["a"].workdir,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    row = {t["name"]: t for t in json.loads(listing.stdout)["tasks"]}[NAME]
    assert row["code_hash"] == code_hash and row["allowed"] == "pinned"
    assert row["source"] == f"dir:{fed.tasks_dir.resolve()}"

    proc = fed.train("--rounds", "2", "--min-sites", "3", "--sites", ",".join(SITES),
                     "--round-timeout", "240")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = _events(proc.stdout)
    run_id = events[0]["run_id"]
    run = fed.read("run", run_id)
    assert run["code_hash"] == code_hash
    assert [r["state"] for r in run["rounds"]] == ["aggregated", "aggregated"]
    assert all(r["n_results"] == 3 for r in run["rounds"])
    jobs = fed.read("jobs", "--run", run_id)
    assert len(jobs) == 6 and all(j["state"] == "done" for j in jobs)
    models = fed.read("models", "--run", run_id)
    assert sorted(m["round"] for m in models) == [1, 2]
    # Each job's spec (what the datasite's job body reads) names the site's tasks folder.
    specs = [json.loads(p.read_text()) for p in fed.sites["b"].data_dir.rglob("spec.json")]
    assert specs and {s["tasks_dir"] for s in specs} == {str(fed.tasks_dir.resolve())}

    # One byte: every site now refuses the job, naming the pinned and the current hash.
    path = fed.tasks_dir / "plug_linear.py"
    path.write_text(path.read_text().replace('VERSION = "0.1"', 'VERSION = "0.2"'))
    new_hash = get_task(NAME, fed.tasks_dir).code_hash
    assert new_hash != code_hash
    proc = fed.train("--rounds", "1", "--min-sites", "3", "--sites", ",".join(SITES),
                     "--round-timeout", "60")  # fmt: skip
    assert proc.returncode != 0
    run_id = _events(proc.stdout)[0]["run_id"]
    jobs = fed.read("jobs", "--run", run_id)
    assert sorted(j["site"] for j in jobs) == sorted(SITES)
    for job in jobs:
        assert job["state"] == "rejected", job
        assert job["reason"] == (
            f"task {NAME} changed at this site: its files hash to {new_hash}, "
            f"the allow-list pins {code_hash}"
        )
