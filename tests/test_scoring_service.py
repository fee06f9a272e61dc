"""The scorer with a real scoring process and a small no-torch task, beside a fake daemon.

The daemon side (bus, outbox) is a fake that records what the scorer publishes; the
scoring process is the real one (``python -m site_node.scoring.worker``) loading a task
from a site tasks folder through the registry. The real daemon, broker and cmapss-rul
model are in tests/test_scoring_site.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from schemas import Prediction, Sample, Topics
from site_node.scoring.config import ScoringSettings
from site_node.scoring.model import ActiveModel
from site_node.scoring.service import Scorer
from site_node.scoring.windows import Windows
from site_node.settings import SiteSettings
from site_node.training.jobs.config import TrainingSettings
from site_node.training.tasks.registry import get_task
from tests.helpers.wait import wait_for

PROBE_TASK = '''
"""A scoring probe: level = last x times the weights' number; misbehaves on request."""
import os
import time

NAME = "probe"
VERSION = "1"
DEFAULTS = {}
METRICS = {"mae": "min"}
PRIMARY_METRIC = "mae"
OUTPUTS = {"level": "mm", "spare": ""}
WINDOW = 3


def read_table(paths, params):
    raise NotImplementedError


def load_dataset(source, params):
    raise NotImplementedError


def initial_weights(seed=0):
    return b"1"


def train(weights, data, hp, progress=None):
    raise NotImplementedError


def evaluate(weights, data):
    raise NotImplementedError


def predict(weights, window, params):
    if len(window) < WINDOW:
        raise ValueError("short window")
    last = window[-1]
    if "boom" in last:
        raise ValueError("the boom sensor says no")
    if "die" in last:
        os._exit(3)
    if "hang" in last:
        time.sleep(600)
    return {"level": last["x"] * float(weights.decode()), "spare": 1.0}
'''


class FakeBus:
    def __init__(self) -> None:
        self.connected = True
        self.retained: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        if not self.connected:
            return False
        msg = json.loads(payload)
        with self.lock:
            self.log.append(msg)
            if retain:
                self.retained[topic] = msg
        return True

    def alarms(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return [(m["device"], m["alarm_id"], m["state"]) for m in self.log]


class FakeDaemon:
    """The slice of SiteDaemon the scorer uses."""

    def __init__(self, settings: SiteSettings) -> None:
        self.settings = settings
        self.site_id = settings.site_id
        self.topics = Topics(settings.mqtt.prefix)
        self.session = 1
        self.bus = FakeBus()
        self.watchers: list[Callable[[str, Sequence[Sample]], None]] = []
        self.heartbeats: list[Callable[[], dict[str, Any]]] = []
        self.connected: list[Callable[[], None]] = []
        self.stops: list[Callable[[], None]] = []
        self.sent: list[tuple[str, str, Prediction]] = []
        self._seq = 0
        self.readings: dict[str, int] = {}
        self.clock = 0
        self.scorer: Scorer | None = None
        self.outbox = SimpleNamespace(stats=lambda: SimpleNamespace(last_seq=self._seq))

    def watch_rows(self, fn: Callable[[str, Sequence[Sample]], None]) -> None:
        self.watchers.append(fn)

    def set_heartbeat_extra(self, fn: Callable[[], dict[str, Any]]) -> None:
        self.heartbeats.append(fn)

    def on_connected(self, fn: Callable[[], None]) -> None:
        self.connected.append(fn)

    def on_stop(self, fn: Callable[[], None]) -> None:
        self.stops.append(fn)

    def send_durable(self, kind: str, topic: str, make: Callable[[int], Any]) -> Future[int]:
        self._seq += 1
        msg = make(self._seq)
        self.sent.append((kind, topic, msg))
        fut: Future[int] = Future()
        fut.set_result(self._seq)
        return fut

    def reading(self, device: str, ts: int, **values: float) -> None:
        self.readings[device] = self.readings.get(device, 0) + 1
        row = [Sample(ts=ts, name=k, value=v) for k, v in values.items()]
        for fn in self.watchers:
            fn(device, row)

    def predictions(self, device: str | None = None) -> list[Prediction]:
        return [m for _k, _t, m in self.sent if device is None or m.device == device]


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "probe.py").write_text(PROBE_TASK)
    return folder


@pytest.fixture
def make_daemon(tmp_path: Path, tasks_dir: Path) -> Iterator[Callable[..., FakeDaemon]]:
    made: list[Scorer] = []

    def make(**scoring: Any) -> FakeDaemon:
        settings = SiteSettings(
            site_id="plant-a",
            data_dir=tmp_path / "data",
            training=TrainingSettings(tasks_dir=tasks_dir),
            scoring=ScoringSettings(**scoring),
        )
        return FakeDaemon(settings)

    yield make
    for scorer in made:
        scorer.close()


@pytest.fixture
def scorers() -> Iterator[list[Scorer]]:
    out: list[Scorer] = []
    yield out
    for s in out:
        s.close()


def _model(tmp_path: Path, tasks_dir: Path, rules: tuple[str, ...], **kw: Any) -> ActiveModel:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"1")
    task = get_task("probe", tasks_dir=tasks_dir)
    fields: dict[str, Any] = {
        "deployment_id": "dep-1",
        "model_version": "r-1:5",
        "task": "probe",
        "code_hash": task.code_hash,
        "weights_path": weights,
        "cadence_s": 0.05,
        "rules": rules,
        "devices": (),
    }
    fields.update(kw)
    return ActiveModel(**fields)


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")


def _more(d: FakeDaemon, before: int) -> Callable[[], bool]:
    # The scorer counts a prediction under its lock, after the rules ran on it and the
    # alarms were published: past this, the window's alarms are there to check.
    assert d.scorer is not None
    scorer = d.scorer
    return lambda: scorer.status()["predictions"] > before


def _feed(d: FakeDaemon, device: str, values: list[float]) -> int:
    """One reading at a time, each scored before the next (so every window is seen);
    returns the time of the last one."""
    ts = 0
    assert d.scorer is not None
    for value in values:
        before = d.scorer.status()["predictions"]
        d.clock += 1000
        ts = d.clock
        d.reading(device, ts, x=value)
        if d.readings[device] >= 3:  # the probe task's WINDOW
            wait_for(_more(d, before), 60, f"score of {value}")
    return ts


def test_windows_fill_score_and_publish_predictions_with_units(
    tmp_path: Path, tasks_dir: Path, make_daemon: Callable[..., FakeDaemon], scorers: list[Scorer]
) -> None:
    d = make_daemon()
    scorer = d.scorer = Scorer(d)  # type: ignore[arg-type]
    scorers.append(scorer)
    scorer.activate(_model(tmp_path, tasks_dir, ("level < 10",)))
    d.reading("pump-1", 1000, x=50)
    d.reading("pump-1", 2000, x=50)
    assert d.predictions() == []  # WINDOW is 3: not full yet
    d.reading("pump-1", 3000, x=40, bad=1.0)
    (p,) = wait_for(d.predictions, 60, "first prediction")
    kind, topic, _ = d.sent[0]
    assert (kind, topic) == ("prediction", "fedmq/v1/site/plant-a/prediction/pump-1")
    assert (p.device, p.model_version, p.task, p.window_end, p.seq) == (
        "pump-1", "r-1:5", "probe", 3000, 1,
    )  # fmt: skip
    assert {k: (o.value, o.unit) for k, o in p.outputs.items()} == {
        "level": (40.0, "mm"),
        "spare": (1.0, ""),
    }
    # Nothing new since: no second score of the same window.
    d.reading("pump-2", 3000, x=1)
    wait_for(lambda: scorer.status()["windows"]["devices"] == 2, 30, "second device")
    assert len(d.predictions()) == 1
    st = scorer.status()
    assert st["state"] == "scoring" and st["windows_scored"] == 1 and st["scorer_pid"]
    hb: dict[str, Any] = {}
    for fn in d.heartbeats:
        hb.update(fn())
    assert hb["scoring_state"] == "scoring" and hb["windows_scored"] == 1
    assert hb["scorer_rss_mb"] > 1


def test_alarm_goes_active_and_clears_with_hysteresis(
    tmp_path: Path, tasks_dir: Path, make_daemon: Callable[..., FakeDaemon], scorers: list[Scorer]
) -> None:
    d = make_daemon()
    scorer = d.scorer = Scorer(d)  # type: ignore[arg-type]
    scorers.append(scorer)
    scorer.activate(_model(tmp_path, tasks_dir, ("level < 10 for 2 windows severity critical",)))
    _feed(d, "m", [20, 20, 20, 9, 12, 9])  # one low window at a time: no alarm
    assert d.bus.log == []
    t_active = _feed(d, "m", [8])  # second low window in a row: active
    topic = "fedmq/v1/site/plant-a/alarm/m"
    active = d.bus.retained[topic]
    assert (active["alarm_id"], active["state"], active["severity"], active["value"]) == (
        "level_lt_10", "active", "critical", 8.0,
    )  # fmt: skip
    assert active["rule"] == "level < 10 for 2 windows severity critical"
    assert active["model_version"] == "r-1:5" and active["since"] == t_active
    # Hovering between the threshold and the clear level (11) changes nothing.
    _feed(d, "m", [10.5, 9.5, 10.9, 10, 11.5, 10.2])
    assert len(d.bus.log) == 1
    t_clear = _feed(d, "m", [11, 12])
    cleared = d.bus.retained[topic]
    assert (cleared["state"], cleared["value"], cleared["since"]) == ("cleared", 12.0, t_clear)
    assert d.bus.alarms() == [("m", "level_lt_10", "active"), ("m", "level_lt_10", "cleared")]
    # A reconnect publishes the state again (the broker holds the truth).
    for fn in d.connected:
        fn()
    assert d.bus.alarms()[-1] == ("m", "level_lt_10", "cleared")
    assert d.bus.log[-1]["since"] == t_clear


def test_the_retained_alarm_is_the_most_severe_active_one(
    tmp_path: Path, tasks_dir: Path, make_daemon: Callable[..., FakeDaemon], scorers: list[Scorer]
) -> None:
    d = make_daemon()
    scorer = d.scorer = Scorer(d)  # type: ignore[arg-type]
    scorers.append(scorer)
    rules = ("level < 5 severity critical id very_low", "level < 10 id low")
    scorer.activate(_model(tmp_path, tasks_dir, rules))
    topic = "fedmq/v1/site/plant-a/alarm/m"
    _feed(d, "m", [20, 20, 20, 4])  # both at once: critical retained
    assert d.bus.retained[topic]["alarm_id"] == "very_low"
    assert {(a, s) for _d, a, s in d.bus.alarms()} == {("very_low", "active"), ("low", "active")}
    _feed(d, "m", [6])  # critical clears (>= 5.5): the warning one is retained again
    assert d.bus.alarms()[-2:] == [("m", "very_low", "cleared"), ("m", "low", "active")]
    assert d.bus.retained[topic]["alarm_id"] == "low"
    _feed(d, "m", [3])  # critical again, retained over the (unchanged) warning
    assert d.bus.retained[topic]["alarm_id"] == "very_low"
    assert d.bus.alarms()[-1] == ("m", "very_low", "active")
    for fn in d.connected:
        fn()
    assert d.bus.retained[topic]["alarm_id"] == "very_low"
    # Deactivation clears every active alarm of the model; the process stops.
    pid = scorer.status()["scorer_pid"]
    scorer.deactivate()
    assert {(a, s) for _d, a, s in d.bus.alarms()[-2:]} == {
        ("very_low", "cleared"), ("low", "cleared"),
    }  # fmt: skip
    assert d.bus.retained[topic]["state"] == "cleared"
    assert scorer.status()["state"] == "off" and scorer.status()["scorer_pid"] is None
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "scoring process gone")
    d.reading("m", 99_000, x=1)  # nothing deployed: nothing kept
    assert scorer.status()["windows"]["devices"] == 0


def test_a_failing_window_is_counted_and_a_dying_process_is_restarted(
    tmp_path: Path, tasks_dir: Path, make_daemon: Callable[..., FakeDaemon], scorers: list[Scorer]
) -> None:
    d = make_daemon(score_timeout_s=3)
    scorer = d.scorer = Scorer(d)  # type: ignore[arg-type]
    scorers.append(scorer)
    scorer.activate(_model(tmp_path, tasks_dir, ()))
    _feed(d, "m", [1, 2, 3])
    d.reading("m", 50_000, x=4, boom=1)
    d.clock = 60_000
    wait_for(lambda: scorer.status()["errors"] == 1, 60, "the boom window counted")
    assert "boom sensor says no" in scorer.status()["last_error"]
    pid = scorer.status()["scorer_pid"]
    d.reading("m", 51_000, x=5, die=1)
    wait_for(lambda: scorer.status()["restarts"] == 1, 60, "restart after the process died")
    assert "exited with code 3" in scorer.status()["last_error"]
    _feed(d, "m", [6])  # scored by a new process
    assert scorer.status()["scorer_pid"] not in (None, pid)
    assert d.predictions()[-1].outputs["level"].value == 6.0
    # A hung predict is killed after score_timeout_s and the process replaced.
    d.reading("m", 70_000, x=7, hang=1)
    d.clock = 80_000
    wait_for(lambda: scorer.status()["restarts"] == 2, 60, "restart after the hang")
    assert "no answer within 3 s" in scorer.status()["last_error"]
    _feed(d, "m", [8])
    # kill -9 from outside: restarted too.
    pid = scorer.status()["scorer_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _dead(pid), 30, "the scoring process killed")
    _feed(d, "m", [9])
    assert scorer.status()["restarts"] == 3
    assert "SIGKILL" in scorer.status()["last_error"]


def test_activation_refuses_bad_rules_tasks_hashes_weights_and_outputs(
    tmp_path: Path, tasks_dir: Path, make_daemon: Callable[..., FakeDaemon], scorers: list[Scorer]
) -> None:
    d = make_daemon()
    scorer = d.scorer = Scorer(d)  # type: ignore[arg-type]
    scorers.append(scorer)
    good = _model(tmp_path, tasks_dir, ("level < 10",))
    with pytest.raises(
        ValueError, match=r"rule 1 .level << 10.: column 8: expected a threshold number, found .<."
    ):
        scorer.activate(_model(tmp_path, tasks_dir, ("level << 10",)))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        scorer.activate(_model(tmp_path, tasks_dir, (), task="nope"))
    with pytest.raises(ValueError, match="code hash at this site is"):
        scorer.activate(_model(tmp_path, tasks_dir, (), code_hash="0" * 64))
    with pytest.raises(ValueError, match="does not exist"):
        scorer.activate(_model(tmp_path, tasks_dir, (), weights_path=tmp_path / "none"))
    with pytest.raises(ValueError, match=r"rule output\(s\) \['rul'\] are not outputs"):
        scorer.activate(_model(tmp_path, tasks_dir, ("rul < 30",)))
    assert scorer.status()["state"] == "off"
    scorer.activate(good)
    # A bad activation keeps the current model scoring.
    with pytest.raises(ValueError, match="not outputs"):
        scorer.activate(_model(tmp_path, tasks_dir, ("rul < 30",), deployment_id="dep-2"))
    assert scorer.status()["deployment_id"] == "dep-1"
    _feed(d, "m", [1, 2, 3])
    assert scorer.status()["state"] == "scoring"


def test_default_rules_from_the_site_config_and_device_coverage(
    tmp_path: Path, tasks_dir: Path, make_daemon: Callable[..., FakeDaemon], scorers: list[Scorer]
) -> None:
    d = make_daemon(rules=["level > 100 id high"])
    scorer = d.scorer = Scorer(d)  # type: ignore[arg-type]
    scorers.append(scorer)
    scorer.activate(_model(tmp_path, tasks_dir, (), devices=("a",)))
    assert scorer.status()["rules"][0].endswith("id high")
    for ts in (1, 2, 3):
        d.reading("b", ts, x=500)  # not covered
    _feed(d, "a", [500, 500, 500])
    assert {p.device for p in d.predictions()} == {"a"}
    assert d.bus.alarms() == [("a", "high", "active")]


def test_alarm_states_survive_a_restart_of_the_same_deployment_and_clear_on_another(
    tmp_path: Path, tasks_dir: Path, make_daemon: Callable[..., FakeDaemon], scorers: list[Scorer]
) -> None:
    d = make_daemon()
    first = d.scorer = Scorer(d)  # type: ignore[arg-type]
    scorers.append(first)
    model = _model(tmp_path, tasks_dir, ("level < 10",))
    first.activate(model)
    _feed(d, "m", [20, 20, 5])
    since = d.bus.retained["fedmq/v1/site/plant-a/alarm/m"]["since"]
    first.close()  # the daemon stops: alarms stay as they are
    # A new daemon re-activates the same deployment: the alarm is republished, still
    # active since the same time, and clears with hysteresis as before.
    d2 = make_daemon()
    d2.clock = d.clock
    second = d2.scorer = Scorer(d2)  # type: ignore[arg-type]
    scorers.append(second)
    second.activate(model)
    assert d2.bus.log[-1]["state"] == "active" and d2.bus.log[-1]["since"] == since
    _feed(d2, "m", [10.5, 10.5, 10.5])
    assert len(d2.bus.log) == 1
    _feed(d2, "m", [11])
    assert d2.bus.log[-1]["state"] == "cleared"
    _feed(d2, "m", [5])
    second.close()
    # Another deployment after a restart: the old one's active alarm is cleared.
    d3 = make_daemon()
    third = d3.scorer = Scorer(d3)  # type: ignore[arg-type]
    scorers.append(third)
    third.activate(_model(tmp_path, tasks_dir, ("level > 1000",), deployment_id="dep-2"))
    assert [(m["alarm_id"], m["state"], m["model_version"]) for m in d3.bus.log] == [
        ("level_lt_10", "cleared", "r-1:5")
    ]


def test_windows_are_bounded_and_handed_out_as_new_lists() -> None:
    w = Windows(size=2, max_devices=2)
    row = [Sample(ts=5, name="x", value=1.0), Sample(ts=7, name="y", value=2.0, q="bad")]
    w.add("a", row)
    assert w.due() == []  # not full
    w.add("a", [Sample(ts=9, name="x", value=3.0)])
    w.add("a", [Sample(ts=11, name="x", value=4.0)])
    (due,) = w.due()
    assert (due.device, due.rows, due.end_ms) == ("a", [{"x": 3.0}, {"x": 4.0}], 11)
    due.rows.clear()  # the caller's own list: the window keeps its rows
    assert w.due() == []  # nothing new
    w.add("a", [Sample(ts=12, name="x", value=5.0)])
    assert w.due()[0].rows == [{"x": 4.0}, {"x": 5.0}]
    w.add("b", [Sample(ts=1, name="x", value=1.0)])
    w.add("c", [Sample(ts=1, name="x", value=1.0)])  # over max_devices: left out
    w.add("a", [Sample(ts=1, name="only", value=1.0, q="bad")])  # no good sample: nothing
    assert w.stats() == {"devices": 2, "full": 1, "readings": 5, "left_out": 1}
    w.resize(3, lambda dev: dev == "a")
    assert w.stats()["devices"] == 1 and w.due() == []  # 2 rows kept, 3 needed


def test_the_scorer_imports_nothing_heavy() -> None:
    code = (
        "import sys; import site_node.daemon, site_node.scoring.service; "
        "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'syft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
