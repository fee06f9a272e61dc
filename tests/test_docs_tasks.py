"""docs/tasks.md's worked example, run as written: the commands and files of its marked
code blocks (``<!-- doctest: KIND -->`` before a fence), in order, in an empty folder,
against a real Mosquitto, a real ``fedmq serve`` and three real ``fedmq-site run``.

What differs from a reader's terminal, and only this: the broker is the test's own on a
free port (``FEDMQ_MQTT__PORT``, read by every fedmq command) instead of the doc's
``mosquitto -c broker_config/mosquitto-dev.conf`` on 1883; serve's control API takes a free
port (``FEDMQ_HTTP``); ``<HASH>`` and ``<MODEL>`` are read from ``fedmq-site tasks --json``
and ``fedmq models --json`` as the reader reads them from the plain listings; the test
waits for the sites to be online where the doc says "when `fedmq sites` shows ...".
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.broker import Broker
from tests.helpers.coord_proc import REPO, sites_json, wait_until
from tests.helpers.site_proc import SITE_BIN

pytestmark = [pytest.mark.train, pytest.mark.slow]

DOC = REPO / "docs" / "tasks.md"
BIN = SITE_BIN.parent
MARK = re.compile(r"<!-- doctest: (\w+)(?: (\S+))? -->\n```(\w+)\n(.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    kind: str  # broker | run | file | daemons
    arg: str | None
    lang: str
    body: str


def blocks(text: str) -> list[Block]:
    return [Block(m[1], m[2], m[3], m[4]) for m in MARK.finditer(text)]


def test_the_doc_marks_its_example() -> None:
    kinds = [(b.kind, b.arg) for b in blocks(DOC.read_text())]
    assert kinds == [
        ("broker", None),
        ("run", None),
        ("run", None),
        ("run", None),
        ("file", "plant-a.toml"),
        ("file", "plant-b.toml"),
        ("file", "plant-c.toml"),
        ("run", None),
        ("daemons", None),
        ("run", None),
        ("run", None),
    ]
    # Every shell block is marked, so none slips out of the test (unmarked TOML blocks are
    # illustrations: the allow-list forms, an entry point, a dataset's params).
    text = DOC.read_text()
    shell = [m.start() for m in re.finditer(r"^```(bash|console|sh)\n", text, re.M)]
    marked = [m.start(3) - 3 for m in MARK.finditer(text)]
    assert shell and set(shell) <= set(marked), "an unmarked shell block in docs/tasks.md"


class Example:
    def __init__(self, work: Path, port: int) -> None:
        self.work = work
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")},
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FEDMQ_MQTT__PORT": str(port),
            "FEDMQ_HTTP": "127.0.0.1:0",
            "PYTHONUNBUFFERED": "1",
        }
        self.values: dict[str, str] = {}
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.outputs: dict[str, str] = {}

    def fill(self, text: str) -> str:
        for key, value in self.values.items():
            text = text.replace(f"<{key}>", value)
        assert "<HASH>" not in text and "<MODEL>" not in text, text
        return text

    def run(self, line: str) -> str:
        if "<HASH>" in line and "HASH" not in self.values:
            self.read_hash()
        if "<MODEL>" in line:
            models = json.loads(self.run("fedmq models --db fedmq.db --json"))
            self.values["MODEL"] = models[0]["model_id"]
        proc = subprocess.run(
            ["bash", "-c", self.fill(line)], cwd=self.work, env=self.env,
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, f"{line} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        self.outputs[line] = proc.stdout
        return proc.stdout

    def read_hash(self) -> None:
        listed = json.loads(self.run("fedmq-site tasks --tasks-dir tasks --json"))
        [task] = [t for t in listed["tasks"] if t["name"] == "press-fail"]
        self.values["HASH"] = task["code_hash"]

    def start(self, line: str, log: Path) -> None:
        out = log.open("ab")
        args = shlex.split(self.fill(line))
        self.daemons.append(
            subprocess.Popen(args, cwd=self.work, env=self.env, stdout=out, stderr=out)
        )

    def wait_online(self, logs: Path) -> None:
        """Until ``fedmq sites`` shows the three plants online with the task."""
        db = self.work / "fedmq.db"

        def online() -> bool:
            text = "".join(p.read_text(errors="replace") for p in logs.glob("daemon*"))
            assert all(p.poll() is None for p in self.daemons), text[-3000:]
            if not db.exists():
                return False
            try:
                rows = sites_json(db)
            except AssertionError:  # serve has not created its tables yet
                return False
            return all(
                rows.get(s, {}).get("state") == "online" and "press-fail" in rows[s]["tasks"]
                for s in ("plant-a", "plant-b", "plant-c")
            )

        wait_until(online, 300, "three plants online with press-fail", step=1.0)


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Example]:
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    broker.start()
    work = tmp_path / "work"
    work.mkdir()
    ex = Example(work, broker.port)
    try:
        yield ex
    finally:
        for proc in ex.daemons:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        broker.kill()


def test_worked_example_trains_a_federated_model(example: Example, tmp_path: Path) -> None:
    work = example.work
    for block in blocks(DOC.read_text()):
        if block.kind == "broker":
            assert "mosquitto -c broker_config/mosquitto-dev.conf" in block.body
            continue  # the fixture's broker stands in for it
        if block.kind == "file":
            assert block.arg is not None
            if "<HASH>" in block.body and "HASH" not in example.values:
                example.read_hash()
            (work / block.arg).write_text(example.fill(block.body))
            continue
        lines = [line for line in block.body.splitlines() if line.strip()]
        if block.kind == "daemons":
            for i, line in enumerate(lines):
                example.start(line, tmp_path / f"daemon{i}.log")
            example.wait_online(tmp_path)
            continue
        for line in lines:
            example.run(line)

    out = example.outputs
    new = out["fedmq-site task new press-fail --out tasks"]
    assert f'allow = ["press-fail@{example.values["HASH"]}"]' in new
    listing = out["fedmq-site tasks --tasks-dir tasks"]
    assert "press-fail" in listing and example.values["HASH"] in listing
    assert "pinned" in out["fedmq-site tasks --config plant-a.toml"]
    train = next(v for k, v in out.items() if k.startswith("fedmq train"))
    assert "round 3 aggregated: 3 results" in train, train
    runs = json.loads(example.run("fedmq runs --db fedmq.db --json"))
    assert runs[0]["state"] == "done" and runs[0]["task"] == "press-fail"
    models = json.loads(example.run("fedmq models --db fedmq.db --json"))
    assert sorted(m["round"] for m in models) == [1, 2, 3]
    assert example.values["MODEL"] == models[0]["model_id"] and models[0]["round"] == 3
    assert (work / "press-fail.npz").read_bytes()[:2] == b"PK"  # an npz (zip) archive
    scored = json.loads(
        example.run(
            "fedmq-site task check press-fail --config plant-b.toml --weights press-fail.npz --json"
        )
    )
    assert scored["weights"] == "press-fail.npz" and scored["n_samples"] == 0
    assert 0.5 < scored["metrics"]["roc_auc"] <= 1.0  # the federated model, on plant-b's days
