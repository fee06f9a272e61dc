"""Live scoring at a real site: real Mosquitto, a real ``fedmq-site run`` replaying two
C-MAPSS FD001 engines in a loop as one device, a cmapss-rul model trained here for a few
seconds and deployed with a signed ``cmd/deploy`` (the deployment service hands it to the
scorer), the test playing the coordinator (the acker stores and acks durable messages).

Checked: predictions arrive on MQTT with the model's outputs and units, one new seq each
in window order; the alarm rule goes active (retained on the broker) near engine 1's end
and clears with hysteresis in engine 2, exactly where the rule's state machine says it
should given the predictions; the daemon process maps no torch or numpy (the scoring
process does); kill -9 of the scoring process restarts it while the site's durable stream
(telemetry and predictions) keeps every seq.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.admin.signing import generate_keypair, load_private_key, sign
from schemas import Alarm, DeployChunk, DeployCommand, Topics, encode, make_blob, now_ms
from site_node.scoring.rules import RuleState, parse_rule
from site_node.training.tasks import get_task
from tests.helpers.acker import Acker, Stored
from tests.helpers.broker import Broker
from tests.helpers.data import TRAIN_FD001
from tests.helpers.mqtt import TestClient
from tests.helpers.site_proc import SiteProc, site_settings
from tests.helpers.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.train]

TASK = "cmapss-rul"
RULE = "rul < 40 for 2 windows"  # clears at 44, after 2 windows
ACTIVATE_S = 180.0  # the scoring process's first start imports torch (on a loaded machine)


@dataclass
class Scoring:
    site: SiteProc
    acker: Acker
    topics: Topics
    port: int
    deployment_id: str
    broker: Broker

    def stored(self, kind: str) -> list[Stored]:
        return [r for r in self.acker.stored("s1") if r.kind == kind]

    def predictions(self) -> list[dict[str, Any]]:
        return [r.payload for r in self.stored("prediction")]

    def heartbeat(self, **want: Any) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            for h in reversed(self.acker.heartbeats):
                if h.get("site") == "s1" and all(h.get(k) == v for k, v in want.items()):
                    return h
            return None

        found = wait_for(seen, 60, f"heartbeat with {want}")
        assert found is not None
        return found

    def retained_alarm(self, timeout: float = 60.0) -> dict[str, Any]:
        """The alarm message retained on the broker (a new subscriber's first message)."""

        def fetch() -> dict[str, Any] | None:
            client = TestClient(self.port).connect()
            try:
                client.subscribe(self.topics.alarm("s1", "engine"))
                got = [m for m in client.collect(1.0) if m.retain and m.payload]
                return dict(json.loads(got[-1].payload)) if got else None
            finally:
                client.close()

        found = wait_for(fetch, timeout, "a retained alarm")
        assert found is not None
        return found


def _trained_weights() -> bytes:
    """cmapss-rul trained for a few seconds on engines 3-14 (never the replayed 1 and 2)."""
    task = get_task(TASK)
    impl = task.impl
    table = impl.read_table(TRAIN_FD001, {"units": list(range(3, 15))})
    data = impl.load_dataset(table, {"val_fraction": 0})
    weights, _n, _metrics = impl.train(None, data, {"epochs": 3, "seed": 1})
    return bytes(weights)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _scorer_pid(site_pid: int) -> int | None:
    for pid in _children(site_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"site_node.scoring.worker" in cmd:
            return pid
    return None


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scoring]:
    tmp = tmp_path_factory.mktemp("scoring")
    # A private broker (without persistence): the last test restarts it.
    (tmp / "broker").mkdir()
    broker = Broker(tmp / "broker")
    broker.start()
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    topics = Topics(prefix)
    generate_keypair(tmp / "coord.key", tmp / "coord.pub")
    code_hash = get_task(TASK).code_hash
    engine = {
        "name": "engine", "source": "file", "path": str(TRAIN_FD001), "preset": "cmapss",
        "include": {"unit": [1, 2]}, "rate_hz": 20.0, "loop": True,
    }  # fmt: skip
    settings = site_settings(
        tmp, broker.port, prefix, site_id="s1", devices=[engine],
        coordinator_public_key_file=str(tmp / "coord.pub"),
        training={"allow": [f"{TASK}@{code_hash}"]},
    )  # fmt: skip
    site = SiteProc(tmp / "s1", settings).start()
    acker = Acker(broker.port, prefix, tmp / "acker.db").start()
    client = TestClient(broker.port).connect()
    try:
        weights = _trained_weights()
        blob, parts = make_blob(weights, 64 * 1024)
        cmd = DeployCommand(
            site="s1", session=1, cmd_id=uuid.uuid4().hex, expires_at=now_ms() + 300_000,
            deployment_id="dep-score", model_version="v1", task=TASK, code_hash=code_hash,
            weights=blob, cadence_s=0.25, rules=(RULE,),
        )  # fmt: skip
        wait_for(lambda: any(h.get("site") == "s1" for h in acker.heartbeats), 60, "site up")
        client.publish(topics.cmd("s1", "deploy"), encode(sign(cmd, load_private_key(
            tmp / "coord.key"), prefix)))  # fmt: skip
        for i, part in enumerate(parts):
            chunk = DeployChunk(site="s1", session=1, job_id=cmd.deployment_id, index=i,
                                total=len(parts), sha256=blob.sha256, data=part)  # fmt: skip
            client.publish(topics.cmd("s1", "deploy"), encode(chunk))
        yield Scoring(site, acker, topics, broker.port, cmd.deployment_id, broker)
    finally:
        site.kill()
        client.close()
        acker.stop()
        broker.kill()


def test_predictions_and_an_alarm_with_hysteresis(scoring: Scoring) -> None:
    rule = parse_rule(RULE)
    alarms = TestClient(scoring.port).connect()
    try:
        alarms.subscribe(scoring.topics.alarm("s1", "engine"))
        wait_for(scoring.predictions, ACTIVATE_S, "first prediction")
        first = scoring.predictions()[0]
        assert (first["device"], first["model_version"], first["task"]) == ("engine", "v1", TASK)
        assert set(first["outputs"]) == {"rul"} and first["outputs"]["rul"]["unit"] == "cycles"
        active = alarms.expect(lambda m: json.loads(m.payload)["state"] == "active", 120)
        cleared = alarms.expect(lambda m: json.loads(m.payload)["state"] == "cleared", 120)
    finally:
        alarms.close()
    a, c = Alarm.model_validate_json(active.payload), Alarm.model_validate_json(cleared.payload)
    assert (a.alarm_id, a.rule, a.severity, a.model_version) == ("rul_lt_40", RULE, "warning", "v1")
    assert a.value is not None and a.value < 40
    assert c.value is not None and c.value >= 44 and c.since > a.since

    # The alarm messages are exactly the transitions of the rule over the predictions, in
    # seq order (the site evaluates every prediction it publishes, in that order).
    # (Predictions go through the outbox; the alarm straight to the broker: it may be first.)
    wait_for(lambda: any(p["window_end"] == c.since for p in scoring.predictions()), 60,
             "the prediction that cleared the alarm")  # fmt: skip
    preds = scoring.predictions()
    seqs = [p["seq"] for p in preds]
    assert seqs == sorted(set(seqs))  # one new seq each
    ends = [p["window_end"] for p in preds]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)  # windows in order, each once
    state, transitions = RuleState(), []
    for p in preds:
        value = p["outputs"]["rul"]["value"]
        if state.update(rule, value, p["window_end"]):
            transitions.append((state.state, p["window_end"], value))
            if len(transitions) == 2:
                break
    assert transitions[:2] == [("active", a.since, a.value), ("cleared", c.since, c.value)]
    # Hovering: predictions between 40 and 44 while active never cleared it.
    retained = scoring.retained_alarm()
    assert retained["alarm_id"] == "rul_lt_40" and retained["since"] >= a.since

    hb = scoring.heartbeat(scoring_state="scoring")
    assert hb["windows_scored"] > 0 and hb["scorer_rss_mb"] > 20 and hb["model_version"] == "v1"


def test_the_daemon_maps_no_torch_and_a_killed_scorer_restarts_without_a_gap(
    scoring: Scoring,
) -> None:
    wait_for(scoring.predictions, ACTIVATE_S, "scoring")
    site_pid = scoring.site.pid
    scorer = wait_for(lambda: _scorer_pid(site_pid), 60, "the scoring process")
    assert scorer is not None
    # The check can fail: the scoring process does map torch and numpy.
    assert "libtorch" in _maps(scorer) and "numpy" in _maps(scorer)
    daemon_maps = _maps(site_pid)
    assert "torch" not in daemon_maps and "numpy" not in daemon_maps
    assert "pandas" not in daemon_maps

    n = len(scoring.predictions())
    os.kill(scorer, signal.SIGKILL)
    again = wait_for(lambda: (p := _scorer_pid(site_pid)) not in (None, scorer) and p, 120,
                     "a new scoring process")  # fmt: skip
    wait_for(lambda: len(scoring.predictions()) > n + 5, 120, "predictions after the restart")
    assert scoring.site.alive() and _scorer_pid(site_pid) == again
    assert "killed by SIGKILL" in scoring.site.log_text()
    # Nothing of the site's durable stream went missing: every seq from 1 to the last is
    # stored (telemetry, predictions and deployment statuses share the stream).
    wait_for(lambda: scoring.acker.acked("s1") > 0, 30, "acks")
    seqs = [r.seq for r in scoring.acker.stored("s1")]
    assert seqs == list(range(1, len(seqs) + 1)), "a hole in the site's stream"
    assert scoring.acker.gap_seqs("s1") == set()
    telemetry = [r.payload for r in scoring.stored("telemetry")]
    assert sum(len(t["samples"]) for t in telemetry) > 1000


def test_a_restarted_broker_gets_the_alarm_state_again(scoring: Scoring) -> None:
    # The test broker keeps nothing across a restart: the retained alarm is gone with it,
    # and the site publishes every alarm's state again when it reconnects.
    before = scoring.retained_alarm()
    n = len(scoring.predictions())
    scoring.broker.restart()
    again = scoring.retained_alarm()
    assert again["alarm_id"] == before["alarm_id"] == "rul_lt_40"
    assert again["since"] >= before["since"]  # the same state, or a later transition
    if again["since"] == before["since"]:
        assert (again["state"], again["value"]) == (before["state"], before["value"])
    # Scoring went on; predictions made meanwhile were kept in the outbox and arrive.
    wait_for(lambda: len(scoring.predictions()) > n + 5, 120, "predictions after the restart")
    seqs = [r.seq for r in scoring.acker.stored("s1")]
    wait_for(lambda: scoring.acker.acked("s1") >= seqs[-1], 60, "everything acked")
    seqs = [r.seq for r in scoring.acker.stored("s1")]
    assert seqs == list(range(1, len(seqs) + 1)), "a hole in the site's stream"
