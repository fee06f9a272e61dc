"""A base install (``pip install fedmq``, no ``train`` extra) runs the coordinator: ``fedmq
serve``, ``fedmq sites`` and ``fedmq train`` run in subprocesses that cannot import torch,
syft, pandas or matplotlib, and a round of ``cmapss-rul`` answered by fake sites is
aggregated into a model version (no test RMSE: the coordinator no longer scores models;
the sites' code does).

The heavy packages are shadowed by stubs on PYTHONPATH that raise ModuleNotFoundError,
as on a machine without them; the environment reaches serve's writer child as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from coordinator.admin.signing import generate_keypair
from coordinator.training.aggregate import dump_npz
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import FEDMQ, REPO, Coordinator, wait_until
from tests.helpers.fake_trainer import FakeTrainer

# The demo's task name: before this change serve imported torch for it (and scored its
# models with a torch copy of the model), so a base install could not close its round.
TASK, CODE_HASH = "cmapss-rul", "d" * 64
HEAVY = ("torch", "syft", "pandas", "matplotlib")


def _answer(_rnd: int, glob: dict[str, np.ndarray] | None) -> tuple[bytes, int]:
    base = glob or {"w": np.zeros(4, np.float32), "b": np.zeros(1, np.float32)}
    return dump_npz({k: v + np.float32(0.5) for k, v in base.items()}), 50


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import torch`` (syft, ...) fails as if not installed."""
    stubs = tmp_path / "no-extras"
    for name in HEAVY:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {name!r} (base install)'!r}, "
            f"name={name!r})\n"
        )
    path = os.pathsep.join([str(stubs), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path.rstrip(os.pathsep)}


def _fedmq(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDMQ, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, **env},
    )  # fmt: skip


def test_the_stubs_block_the_heavy_imports(base_env: dict[str, str]) -> None:
    for name in HEAVY:
        proc = subprocess.run(
            [*FEDMQ[:2], f"import {name}"], capture_output=True, text=True, cwd=REPO,
            env={**os.environ, **base_env}, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr, name


def test_serve_sites_and_a_round_of_cmapss_rul_without_the_train_extra(
    broker: Broker, tmp_path: Path, base_env: dict[str, str]
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    coord = Coordinator(tmp_path / "c.db", broker.port, prefix,
                        ("--signing-key", str(tmp_path / "k.key")), env=base_env)  # fmt: skip
    coord.start().wait_ready(60)
    sites: list[FakeTrainer] = []
    try:
        sites = [
            FakeTrainer(broker.port, prefix, f"b{i}-{uuid.uuid4().hex[:4]}", TASK, CODE_HASH,
                        _answer, rows=500).start()
            for i in range(2)
        ]  # fmt: skip
        ids = {s.site for s in sites}

        def online() -> bool:
            proc = _fedmq(base_env, "sites", "--db", str(coord.db), "--json")
            assert proc.returncode == 0, proc.stderr
            rows = {r["site"]: r for r in json.loads(proc.stdout)["sites"]}
            return all(rows.get(s, {}).get("state") == "online" for s in ids)

        wait_until(online, 30, f"{sorted(ids)} online in `fedmq sites`", step=0.3)
        proc = _fedmq(
            base_env, "train", "--task", TASK, "--rounds", "1", "--min-sites", "2",
            "--round-timeout", "60", "--wait-sites", "20", "--db", str(coord.db), "--json",
            timeout=150,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:] + coord.log_text()[-3000:]
        assert coord.alive(), coord.log_text()[-3000:]
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        [closed] = [e for e in events if e["event"] == "round_closed"]
        assert closed["state"] == "aggregated" and closed["n_results"] == 2, closed
        assert closed["test_rmse"] is None

        models = _fedmq(base_env, "models", "--db", str(coord.db), "--json")
        assert models.returncode == 0, models.stderr
        [model] = json.loads(models.stdout)
        assert model["task"] == TASK and model["n_sites"] == 2 and model["n_samples"] == 100
        assert model["test_rmse"] is None
        out = tmp_path / "m.npz"
        export = _fedmq(base_env, "models", "export", model["model_id"], "--out", str(out),
                        "--db", str(coord.db))  # fmt: skip
        assert export.returncode == 0, export.stderr
        with np.load(out, allow_pickle=False) as arrays:  # FedAvg of two +0.5 answers
            np.testing.assert_allclose(arrays["w"], np.full(4, 0.5, np.float32))
        table = _fedmq(base_env, "models", "--db", str(coord.db))
        assert table.returncode == 0 and model["model_id"] in table.stdout
        assert "ModuleNotFoundError" not in coord.log_text()
    finally:
        for s in sites:
            s.stop()
        coord.kill()
