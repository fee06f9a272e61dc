"""The site's allow-list: names pinned to code hashes, its errors, and the job policy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import TrainCommand
from site_node.training.jobs import policy
from site_node.training.jobs.config import TrainingSettings
from site_node.training.tasks import TASKS, TASKS_DIR_ENV, get_task

TASK = """\
NAME = "{name}"
VERSION = "1.2"
DEFAULTS = {{"epochs": 1}}
METRICS = {{"mse": "min"}}
PRIMARY_METRIC = "mse"
OUTPUTS = {{"y": ""}}
WINDOW = 1
"""


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "mine.py").write_text(TASK.format(name="my-task"))
    return folder


def _cmd(task: str, code_hash: str) -> TrainCommand:
    return TrainCommand(
        site="s", session=1, cmd_id="c1", expires_at=2**40, job_id="j1", run_id="r",
        round=0, task=task, code_hash=code_hash,
    )  # fmt: skip


def _settings(tasks_dir: Path, allow: list[object]) -> TrainingSettings:
    datasets = [{"name": "d", "task": "my-task", "paths": ["x.csv"]}]
    return TrainingSettings.model_validate(
        {"tasks_dir": str(tasks_dir), "allow": allow, "datasets": datasets}
    )


def test_allow_forms_pin_hashes_and_survive_the_worker_round_trip(tasks_dir: Path) -> None:
    mine = get_task("my-task", tasks_dir).code_hash
    builtin = TASKS["ai4i-failure"].code_hash
    for entry in (
        {"task": "my-task", "hash": mine},
        f"my-task@{mine}",
        f"my-task@sha256:{mine}",
    ):
        t = _settings(tasks_dir, [entry, "ai4i-failure"])
        assert t.allow == ["my-task", "ai4i-failure"] and t.pins == {"my-task": mine}
        assert t.pinned_hash("my-task") == mine and t.pinned_hash("ai4i-failure") == builtin
        assert t.tasks_dir == tasks_dir.resolve()
        again = TrainingSettings.model_validate_json(t.model_dump_json())
        assert again == t and again.pinned_hash("my-task") == mine


def test_allow_list_errors_name_the_known_tasks(tasks_dir: Path) -> None:
    (tasks_dir / "broken.py").write_text("VERSION = '1'\n")
    mine = get_task("my-task", tasks_dir).code_hash
    with pytest.raises(ValidationError) as exc:
        _settings(tasks_dir, ["my-task", "typo-task"])
    msg = str(exc.value)
    assert "unknown task(s) ['typo-task'] in training.allow" in msg
    assert f"my-task {mine} (dir:{tasks_dir.resolve()})" in msg
    assert f"cmapss-rul {TASKS['cmapss-rul'].code_hash} (builtin)" in msg
    assert "broken.py" in msg  # why a file in the folder is not a task
    cases = {
        "my-task@abc": "must be the 64 lowercase hex digits",
        "my task": "must match",
    }
    for entry, why in cases.items():
        with pytest.raises(ValidationError, match=why):
            _settings(tasks_dir, [entry])
    with pytest.raises(ValidationError, match=r"bad training\.allow entry"):
        _settings(tasks_dir, [{"task": "my-task", "sha": mine}])
    with pytest.raises(ValidationError, match="twice"):
        _settings(tasks_dir, ["my-task", f"my-task@{mine}"])
    with pytest.raises(ValidationError, match=r"not in training\.allow"):
        TrainingSettings.model_validate({"allow": [], "pins": {"my-task": mine}})
    with pytest.raises(ValidationError, match=r"left out: tasks_dir .*nope is not a folder"):
        _settings(tasks_dir / "nope", ["my-task"])
    with pytest.raises(ValidationError, match=r"unknown task.*in training\.datasets"):
        TrainingSettings.model_validate(
            {"datasets": [{"name": "d", "task": "my-task", "paths": ["x"]}]}
        )


def test_policy_refuses_changed_code_naming_both_hashes(tasks_dir: Path) -> None:
    path = tasks_dir / "mine.py"
    old = get_task("my-task", tasks_dir).code_hash
    pinned = _settings(tasks_dir, [f"my-task@{old}"])
    plain = _settings(tasks_dir, ["my-task"])  # pins the code found at start
    for t in (pinned, plain):
        assert policy.refusal(_cmd("my-task", old), t, {"my-task"}) is None
        assert policy.advertised(t)["my-task"].code_hash == old
        assert policy.advertised(t)["my-task"].version == "1.2"
        other = "0" * 64
        why = policy.refusal(_cmd("my-task", other), t, {"my-task"})
        assert why == (
            f"code hash mismatch for my-task: this site runs {old}, the command asks {other}"
        )
        assert "not in this site's allow-list" in str(
            policy.refusal(_cmd("ai4i-failure", old), t, None)
        )
    assert policy.pin_warnings(pinned) == []
    path.write_bytes(path.read_bytes() + b" ")  # one byte
    new = get_task("my-task", tasks_dir).code_hash
    assert new != old
    for t in (pinned, plain):
        why = policy.refusal(_cmd("my-task", old), t, {"my-task"})
        assert why == (
            f"task my-task changed at this site: its files hash to {new}, the allow-list pins {old}"
        )
        assert len(why) <= 500  # fits a job status reason
        # The registration still offers the pinned code (the jobs say why they fail).
        assert policy.advertised(t)["my-task"].code_hash == old
    assert policy.pin_warnings(pinned) == [
        f"task my-task: its files ({path.resolve()}) hash to {new}, the allow-list pins "
        f"{old}; its jobs will be refused"
    ]
    path.unlink()
    assert policy.refusal(_cmd("my-task", old), pinned, None) == (
        "task my-task is allow-listed but no longer found at this site"
    )


def test_use_tasks_dir_names_the_folder_for_the_worker(
    tasks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TASKS_DIR_ENV, raising=False)
    policy.use_tasks_dir(_settings(tasks_dir, ["my-task"]))
    assert os.environ[TASKS_DIR_ENV] == str(tasks_dir.resolve())
    assert get_task("my-task").source == f"dir:{tasks_dir.resolve()}"
    policy.use_tasks_dir(TrainingSettings())
    assert TASKS_DIR_ENV not in os.environ
    assert json.loads(TrainingSettings().model_dump_json())["tasks_dir"] is None
