"""``fedmq demo`` end to end as a real subprocess: its own Mosquitto, serve, site processes
with syft, a federated round; then its outputs, its database, and that nothing survives it
(a clean finish and a Ctrl-C mid-run).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.coord_proc import FEDMQ, REPO, fedmq, sites_json, wait_until

pytestmark = [pytest.mark.train, pytest.mark.slow]

SITE = [sys.executable, "-c", "from site_node.cli import main; main()"]

# Small and fast: 2 sites of 5 engines each (4 train, 1 validation), 1 epoch.
SMALL = ["--sites", "2", "--epochs", "1", "--engines", "10", "--rate", "5"]


class Demo:
    """``fedmq demo`` in its own session, stdout collected line by line."""

    def __init__(self, out: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")}
        self.out = out
        self.proc = subprocess.Popen(
            [*FEDMQ, "demo", "--out", str(out), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env={**env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"demo still running after {timeout}s:\n{self.text[-3000:]}"
            ) from None
        self._reader.join(5)
        return code

    def child_pids(self) -> dict[str, int]:
        doc = json.loads((self.out / "pids.json").read_text())
        assert doc["demo"] == self.proc.pid
        return {name: int(pid) for name, pid in doc["children"].items()}

    def kill_everything(self) -> None:
        """Teardown safety net: whatever a failing test left behind."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if (self.out / "pids.json").exists():
            for pid in self.child_pids().values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def demo_runner(tmp_path: Path) -> Iterator[list[Demo]]:
    demos: list[Demo] = []
    yield demos
    for d in demos:
        d.kill_everything()


def _alive(pid: int) -> bool:
    """A running (not zombie) process with this pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group_members(pgids: set[int]) -> list[tuple[int, str]]:
    """Live processes whose process group is one of ``pgids`` (children's own children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            found.append((int(entry.name), cmd))
    return found


def _assert_nothing_left(demo: Demo) -> None:
    pids = demo.child_pids()
    assert {"broker", "coordinator", "site-1", "site-2"} <= set(pids)
    # Every child led its own process group, so a survivor or anything it started (the
    # coordinator's writer process, syft workers) still carries one of these pgids.
    assert [n for n, p in pids.items() if _alive(p)] == []
    assert _group_members(set(pids.values())) == []


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_demo_runs_a_round_reports_and_leaves_nothing_behind(
    tmp_path: Path, demo_runner: list[Demo]
) -> None:
    out = tmp_path / "demo"
    demo = Demo(out, *SMALL, "--rounds", "1")
    demo_runner.append(demo)
    assert demo.wait(240) == 0, demo.text[-4000:]
    text = demo.text
    _assert_nothing_left(demo)

    # While it ran: both sites live with the task, in the printed `fedmq sites` table.
    assert "all 2 sites live" in text
    table = [line.split() for line in text.splitlines() if line.startswith("site-")]
    assert ["site-1", "online"] in [row[:2] for row in table]
    assert ["site-2", "online"] in [row[:2] for row in table]
    assert "round 1/1 aggregated: 2 site results" in text

    # Afterwards the database answers: both registered with the task, cleanly offline
    # (they were stopped before the coordinator, so it stored their shutdown).
    db = out / "fedmq.db"
    sites = sites_json(db)
    assert set(sites) == {"site-1", "site-2"}
    for row in sites.values():
        assert row["tasks"] == ["cmapss-rul"] and row["state"] == "offline", row
    events = json.loads(fedmq("events", "--db", str(db), "--json").stdout)
    went_online = {e["site"] for e in events if e["state_to"] == "online"}
    assert went_online == {"site-1", "site-2"}

    [model] = json.loads(fedmq("models", "--db", str(db), "--json").stdout)
    assert model["round"] == 1 and model["n_sites"] == 2 and model["size"] > 0
    assert model["test_rmse"] is None  # the coordinator no longer scores models

    # The demo scored the round's model with the site's code: the same figure as
    # `fedmq-site task evaluate` gives for the model exported from the database.
    exported = tmp_path / "exported.npz"
    fedmq("models", "export", model["model_id"], "--out", str(exported), "--db", str(db))
    site_eval = subprocess.run(
        [*SITE, "task", "evaluate", "--task", "cmapss-rul", "--weights", str(exported), "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    test_rmse = json.loads(site_eval.stdout)["rmse"]
    assert 0 < test_rmse < 125
    summary = json.loads((out / "summary.json").read_text())
    [rnd] = summary["rounds"]
    assert rnd["state"] == "aggregated" and rnd["n_results"] == 2
    assert math.isclose(rnd["test_rmse"], test_rmse, rel_tol=1e-9)
    assert summary["model_id"] == model["model_id"]
    assert f"{test_rmse:.2f}" in text  # the printed RMSE table
    assert model["model_id"] in (out / "summary.md").read_text()
    width, height = _png_size(out / "learning_curve.png")
    assert width > 300 and height > 200

    # Telemetry streamed from both sites' engines through the file source.
    for site in ("site-1", "site-2"):
        out_t = fedmq("telemetry", site, "--db", str(db), "--sensor", "unit", "--json").stdout
        units = {row["value"] for row in json.loads(out_t)}
        assert units and units <= (set(range(1, 6)) if site == "site-1" else set(range(6, 11)))
    assert f"fedmq sites --db {db}" in text


def test_ctrl_c_mid_run_stops_every_process_and_keeps_a_readable_db(
    tmp_path: Path, demo_runner: list[Demo]
) -> None:
    out = tmp_path / "demo"
    demo = Demo(out, *SMALL, "--rounds", "20")
    demo_runner.append(demo)
    wait_until(
        lambda: "round 1/20" in demo.text or demo.proc.poll() is not None,
        200,
        "the first round to start",
        step=0.2,
    )
    assert demo.proc.poll() is None, demo.text[-3000:]
    started = time.monotonic()
    demo.proc.send_signal(signal.SIGINT)
    assert demo.wait(90) == 130, demo.text[-3000:]
    assert time.monotonic() - started < 60
    _assert_nothing_left(demo)
    assert "interrupted" in demo.text

    db = out / "fedmq.db"
    assert set(sites_json(db)) == {"site-1", "site-2"}
    listing = fedmq("sites", "--db", str(db))
    assert "site-1" in listing.stdout and "site-2" in listing.stdout
    runs = json.loads(fedmq("runs", "--db", str(db), "--json").stdout)
    assert len(runs) == 1
