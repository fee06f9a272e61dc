"""``fedmq-site approve`` / ``reject`` (one module) run as real subprocesses: the decision
reaches the job store, and each refusal is one line with its named exit code."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fedmq_runtime.cli import EXIT
from site_node.training.jobs.store import JobStore
from tests.helpers.site_proc import SITE_BIN, to_toml


def _site(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SITE_BIN), *args], capture_output=True, text=True, timeout=60)


def _one_line(proc: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert words in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_approve_and_reject_decide_pending_jobs_only(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    cfg = tmp_path / "site.toml"
    cfg.write_text(to_toml({"site_id": "s", "data_dir": str(data)}))
    daemon = JobStore(data / "jobs.db")
    daemon.add("j1", "r", 1, "cmapss-rul", "pending_approval", "{}")
    daemon.add("j2", "r", 1, "cmapss-rul", "pending_approval", "{}")
    daemon.add("j3", "r", 1, "cmapss-rul", "running", "{}")

    ok = _site("approve", "j1", "--config", str(cfg))
    assert ok.returncode == EXIT["ok"] and ok.stdout.strip() == "approved j1", ok.stderr
    ok = _site("reject", "j2", "--reason", "line down", "--config", str(cfg))
    assert ok.returncode == EXIT["ok"] and ok.stdout.strip() == "rejected j2", ok.stderr
    decided = {j.job_id: (j.decision, j.decision_reason) for j in daemon.decisions()}
    assert decided == {"j1": ("approve", ""), "j2": ("reject", "line down")}

    _one_line(_site("approve", "j1", "--config", str(cfg)), EXIT["usage"], "already decided")
    _one_line(_site("approve", "j3", "--config", str(cfg)), EXIT["usage"], "not pending")
    _one_line(_site("approve", "nope", "--config", str(cfg)), EXIT["not_found"], "nope")
    no_reason = _site("reject", "j3", "--config", str(cfg))  # click's own usage error
    assert no_reason.returncode == EXIT["usage"] and "--reason" in no_reason.stderr
    daemon.close()


def test_site_cli_lists_every_command_without_importing_them(tmp_path: Path) -> None:
    out = _site("--help")
    assert out.returncode == 0
    for name in ("run", "init", "status", "deregister", "data", "jobs", "approve", "reject"):
        assert f"  {name} " in out.stdout, out.stdout
