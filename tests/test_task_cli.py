"""``fedmq-site tasks`` and ``fedmq-site task new|check`` as real subprocesses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from site_node.training.tasks import TASKS
from tests.helpers.site_proc import SITE_BIN

pytestmark = pytest.mark.train


def _site(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SITE_BIN), *args], capture_output=True, text=True, timeout=180, cwd=cwd
    )


def test_new_task_is_listed_and_passes_check_out_of_the_box(tmp_path: Path) -> None:
    out = _site(tmp_path, "task", "new", "press-fail", "--out", "tasks")
    assert out.returncode == 0, out.stderr
    module, sample = (
        tmp_path / "tasks" / "press_fail.py",
        tmp_path / "tasks" / "press-fail-sample.csv",
    )
    assert module.is_file() and sample.is_file()
    assert (
        sample.read_text().splitlines()[0]
        == "time,machine,volt,rotate,pressure,vibration,fail_soon"
    )

    listed = json.loads(_site(tmp_path, "tasks", "--tasks-dir", "tasks", "--json").stdout)
    rows = {t["name"]: t for t in listed["tasks"]}
    mine = rows["press-fail"]
    assert mine["source"] == f"dir:{(tmp_path / 'tasks').resolve()}" and mine["version"] == "0.1"
    assert mine["files"] == ["press_fail.py"] and mine["allowed"] == "-"
    assert rows["cmapss-rul"]["code_hash"] == TASKS["cmapss-rul"].code_hash
    assert listed["problems"] == []  # the sample CSV beside it is not taken for a task
    # `task new` printed the allow-list line with that hash, and the TOML to paste.
    assert f'allow = ["press-fail@{mine["code_hash"]}"]' in out.stdout

    toml = "[training]" + out.stdout.split("[training]", 1)[1]
    (tmp_path / "site.toml").write_text('site_id = "plant-a"\n' + toml)
    check = _site(tmp_path, "task", "check", "press-fail", "--config", "site.toml", "--json")
    assert check.returncode == 0, check.stderr
    got = json.loads(check.stdout)
    assert got["code_hash"] == mine["code_hash"] and got["rows"] == 6 * 288
    assert set(got["metrics"]) == {"loss", "roc_auc", "f1"}
    assert all(isinstance(v, float) for v in got["metrics"].values())
    assert 0.6 < got["metrics"]["roc_auc"] <= 1.0  # the sample's drift is learnable
    assert 0.0 <= got["outputs"]["p_fail"] <= 1.0
    text = _site(tmp_path, "task", "check", "press-fail", "--config", "site.toml")
    assert text.returncode == 0 and "roc_auc" in text.stdout and "higher is better" in text.stdout

    listed = json.loads(_site(tmp_path, "tasks", "--config", "site.toml", "--json").stdout)
    assert {t["name"]: t["allowed"] for t in listed["tasks"]}["press-fail"] == "pinned"
    module.write_text(module.read_text().replace('VERSION = "0.1"', 'VERSION = "0.2"'))
    listed = json.loads(_site(tmp_path, "tasks", "--config", "site.toml", "--json").stdout)
    assert {t["name"]: t["allowed"] for t in listed["tasks"]}["press-fail"] == "pinned, CHANGED"
    table = _site(tmp_path, "tasks", "--config", "site.toml")
    assert "pinned, CHANGED" in table.stdout and table.stdout.startswith("NAME")


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    assert _site(tmp_path, "task", "new", "press-fail", "--out", "t").returncode == 0
    again = _site(tmp_path, "task", "new", "press-fail", "--out", "t")
    assert again.returncode == 2 and "--force" in again.stderr
    bad = _site(tmp_path, "task", "new", "no spaces", "--out", "t")
    assert bad.returncode == 2 and "must match" in bad.stderr
    builtin = _site(tmp_path, "task", "new", "cmapss-rul", "--out", "t")
    assert builtin.returncode == 2 and "built-in" in builtin.stderr

    unknown = _site(tmp_path, "task", "check", "nope", "--tasks-dir", "t")
    assert unknown.returncode == 3 and "known:" in unknown.stderr and "press-fail" in unknown.stderr
    no_data = _site(tmp_path, "task", "check", "press-fail", "--tasks-dir", "t")
    assert no_data.returncode == 2 and "--data FILE" in no_data.stderr

    (tmp_path / "t" / "half.py").write_text("NAME = 'half'\nVERSION = '1'\n")
    half = _site(tmp_path, "task", "check", "half", "--tasks-dir", "t", "--data", "x.csv")
    assert half.returncode == 2 and "missing DEFAULTS" in half.stderr
    assert "missing function predict()" in half.stderr
    (tmp_path / "t" / "nameless.py").write_text("x = 1\n")
    listing = _site(tmp_path, "tasks", "--tasks-dir", "t")
    assert listing.returncode == 0 and "left out:" in listing.stderr
    assert "nameless.py" in listing.stderr
    absent = _site(tmp_path, "tasks", "--tasks-dir", "missing")
    assert absent.returncode == 2 and "does not exist" in absent.stderr

    # A task whose code fails says which call failed, and where.
    sample = tmp_path / "t" / "press-fail-sample.csv"
    broken = sample.read_text().replace("vibration", "vib", 1)
    (tmp_path / "bad.csv").write_text(broken)
    failed = _site(tmp_path, "task", "check", "press-fail", "--tasks-dir", "t", "--data", "bad.csv")
    assert failed.returncode == 1, failed.stderr
    assert (
        "task press-fail: read_table failed: ValueError: column(s) ['vibration']" in failed.stderr
    )
    assert "press_fail.py:" in failed.stderr
