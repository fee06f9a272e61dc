"""``fedmq demo`` end to end as a real subprocess: its own Mosquitto, serve, site processes
with syft, a federated round, then the final model deployed to both sites scoring FD001
test engines live (the default live-scoring options); then its outputs (the RMSE table,
the predicted-vs-true RUL table checked against the data files and the database, the
alarms line, both plots), its database, and that nothing survives it (a clean finish and
a Ctrl-C mid-run).
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
# One round of 4 epochs: a model good enough that engines near failure raise alarms.
ROUND = ["--sites", "2", "--epochs", "4", "--engines", "10", "--rate", "5", "--rounds", "1"]
FD001 = REPO / "site_node" / "data" / "cmapss_fd001"


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
    demo = Demo(out, *ROUND)
    demo_runner.append(demo)
    assert demo.wait(360) == 0, demo.text[-4000:]
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

    _check_live_scoring(out, text, model["model_id"])


def _truth() -> dict[int, tuple[int, int]]:
    """FD001 test engine -> (its cycles in test_FD001.txt, RUL_FD001 after the last)."""
    ruls = [int(x) for x in (FD001 / "RUL_FD001.txt").read_text().split()]
    lengths: dict[int, int] = {}
    for line in (FD001 / "test_FD001.txt").read_text().splitlines():
        if line.strip():
            unit, cycle = (int(float(v)) for v in line.split()[:2])
            lengths[unit] = max(lengths.get(unit, 0), cycle)
    return {u: (n, ruls[u - 1]) for u, n in lengths.items()}


def _live_table(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = lines.index("predicted vs true remaining useful life (cycles) at the end of "
                        "scored windows:")  # fmt: skip
    assert lines[start + 1].split() == ["SITE", "ENGINE", "CYCLE", "TRUE", "RUL", "PREDICTED",
                                        "RUL", "ERROR", "ALARM"]  # fmt: skip
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("site-"):
            break
        rows.append(line.split())
    return rows


def _check_live_scoring(out: Path, text: str, model_id: str) -> None:
    """The final model deployed to both sites; the printed predicted-vs-true table agrees
    with the data files (truth) and the database (predictions); alarms line and plot."""
    db = out / "fedmq.db"
    assert f"live scoring: the final model {model_id} goes to every site" in text
    deployed = json.loads(fedmq("deployments", "--db", str(db), "--json").stdout)
    assert {(d["site"], d["active"]["model_version"]) for d in deployed} == {
        ("site-1", model_id), ("site-2", model_id)
    }  # fmt: skip
    assert all(d["active"]["rules"] == ["rul < 30"] for d in deployed)

    truth = _truth()
    rows = _live_table(text)
    engines = {(r[0], r[1]) for r in rows}
    # The default: 3 test engines per site, each replayed to its last test cycle.
    assert len(engines) == 6 and {s for s, _ in engines} == {"site-1", "site-2"}
    scored: dict[tuple[str, str], list[list[str]]] = {}
    marked: dict[str, bool] = {}
    for row in rows:
        scored.setdefault((row[0], row[1]), []).append(row)
    for (site, device), checkpoints in scored.items():
        unit = int(device.removeprefix("test-"))
        length, rul_end = truth[unit]
        preds = json.loads(fedmq("predictions", site, "--device", device, "--limit", "10000",
                                 "--db", str(db), "--json").stdout)  # fmt: skip
        cycles = json.loads(
            fedmq("telemetry", site, "--device", device, "--sensor", "cycle",
                  "--limit", "99999", "--db", str(db), "--json").stdout
        )  # fmt: skip
        cycle_at = {c["ts"]: int(c["value"]) for c in cycles}
        by_cycle = {cycle_at[p["window_end"]]: p["outputs"]["rul"]["value"] for p in preds}
        assert all(p["model_version"] == model_id for p in preds)
        for row in checkpoints:
            cycle, true_rul, predicted = int(row[2]), int(row[3]), float(row[4])
            assert true_rul == rul_end + length - cycle, row  # RUL_FD001 + cycles left
            assert f"{by_cycle[cycle]:.1f}" == row[4], (row, by_cycle.get(cycle))
            assert f"{predicted - true_rul:+.1f}" == row[5]
        assert int(checkpoints[-1][2]) == length  # scored up to the engine's last row
        # ALARM: the alarm stored active for the engine, shown on its last row.
        assert [r[6:] for r in checkpoints[:-1]] == [[]] * (len(checkpoints) - 1)
        marked[f"{site}/{device}"] = checkpoints[-1][6:] == ["active"]

    alarms = json.loads(fedmq("alarms", "--db", str(db), "--json").stdout)
    active = sorted(f"{a['site']}/{a['device']}" for a in alarms if a["state"] == "active")
    assert sorted(k for k, v in marked.items() if v) == active
    line = next(ln for ln in text.splitlines() if ln.startswith("alarms raised: "))
    assert line.startswith(f"alarms raised: {len(active)} active of {len(alarms)} (rul < 30): ")
    assert sorted(line.split(": ", 2)[2].split(", ")) == active
    assert active  # the engines replayed end near failure: the model says so
    assert f"$ fedmq alarms --db {db}" in text

    png = out / "rul_predictions.png"
    assert f"rul plot        {png}" in text
    width, height = _png_size(png)
    assert width > 600 and height > 300
    live = json.loads((out / "summary.json").read_text())["live"]
    assert live["model_id"] == model_id and live["alarms_active"] == len(active)
    stored = sum(len(json.loads(fedmq("predictions", s, "--limit", "10000", "--db", str(db),
                                      "--json").stdout)) for s in ("site-1", "site-2"))  # fmt: skip
    assert live["predictions"] == stored > 6
    assert 0 < live["rmse"] < 125
    assert "## Live scoring with the final model" in (out / "summary.md").read_text()


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


def test_test_engines_truth_choice_and_interleaved_replay(tmp_path: Path) -> None:
    from coordinator.demo.live import choose_engines, load_test_engines, write_replay

    data = load_test_engines()
    assert len(data) == 100
    lines, rul = data[31]
    assert (len(lines), rul) == (196, 8)  # test_FD001.txt and RUL_FD001.txt
    # Engines 26-50 near failure first (lowest RUL_FD001 with 100 rows to replay).
    chosen = choose_engines(range(26, 51), data, 3, 100)
    assert [e.unit for e in chosen] == [31, 34, 42]
    e31 = chosen[0]
    assert e31.device == "test-31" and len(e31.lines) == 100
    assert e31.true_rul(196) == 8 and e31.true_rul(97) == 107  # RUL_FD001 + cycles left
    assert e31.lines[0].split()[:2] == ["31", "97"] and e31.lines[-1].split()[:2] == ["31", "196"]
    # Too short for the rows asked: longer ones first, never one under a window.
    short = choose_engines([1, 2, 3], {1: (["x"] * 20, 1), 2: (["x"] * 40, 5),
                                       3: (["x"] * 90, 9)}, 3, 100)  # fmt: skip
    assert [e.unit for e in short] == [2, 3]

    path = tmp_path / "test_replay.txt"
    assert write_replay(path, chosen) == 300
    rows = [ln.split()[:2] for ln in path.read_text().splitlines()]
    assert rows[:3] == [["31", "97"], ["34", "104"], ["42", "57"]]  # one row of each in turn
    assert [r[0] for r in rows[-3:]] == ["31", "34", "42"]
    assert not list(tmp_path.glob("*.tmp"))


def test_site_config_with_the_test_replay_validates(tmp_path: Path) -> None:
    from coordinator.demo.sites import SiteSpec, site_toml, site_train_file
    from site_node.settings import load_site_settings
    from site_node.sources.config import FileDeviceConfig

    spec = SiteSpec("site-1", (1, 2, 3), tmp_path / "site-1")
    spec.workdir.mkdir()
    text = site_toml(spec, 1883, "fedmq/v1", site_train_file(), tmp_path / "k.pub", 2.0,
                     test_rate_hz=20.0)  # fmt: skip
    spec.config.write_text(text)
    settings = load_site_settings(spec.config, env={})
    test = [d for d in settings.devices if isinstance(d, FileDeviceConfig) and d.name == "test"]
    assert len(test) == 1
    assert test[0].device_column == "unit" and test[0].path == spec.test_replay
    assert not test[0].loop and test[0].rate_hz == 20.0
    assert "test_replay" not in site_toml(spec, 1883, "fedmq/v1", site_train_file(),
                                          tmp_path / "k.pub", 2.0)  # fmt: skip
