"""The scorer: the daemon side of live scoring (docs/scoring.md).

:class:`Scorer` keeps each covered device's last ``WINDOW`` readings (its row watcher,
:mod:`site_node.scoring.windows`), and one scoring thread every ``cadence_s`` sends the
windows that are full and got new readings since their last score to the scoring
process (:mod:`site_node.scoring.supervisor`), where the task's ``predict`` runs. Each
window's outputs become a durable :class:`schemas.Prediction`; the alarm rules
(:mod:`site_node.scoring.rules`) turn them into retained :class:`schemas.Alarm` states.

Alarms on the broker: one retained topic per device. Every rule's transition is published
there (the coordinator keeps each rule's state from these live messages); whenever another
rule of that device is active and more severe (then first declared), its state is
published again right after, so the retained message is always the device's most severe
active alarm, or its latest cleared one when none is active. On every reconnect each
alarm's current state is published again in that order. Alarm states are kept in
``data_dir/scoring/alarms.json``, so a restarted site that re-activates the same
deployment resumes them; activating another deployment (or :meth:`Scorer.deactivate`)
publishes the old model's active alarms as cleared.

The scoring process is started at activation (which waits until it has loaded the task
and weights, so a bad task or weights raise ``ValueError`` there) and stopped at
deactivation, so its memory returns to the machine. If it dies, hangs or outgrows its
memory limit, the windows of that round are left unscored (counted as errors) and it is
restarted with backoff; a window whose ``predict`` raises is logged and counted, never
fatal. The daemon process itself never imports torch, numpy or pandas.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from schemas import Alarm, Prediction, PredictionOutput, Sample, encode, now_ms
from site_node.scoring.config import ScoringSettings
from site_node.scoring.model import ActiveModel
from site_node.scoring.protocol import Load, Score
from site_node.scoring.rules import Rule, RuleState, parse_rules, severity_rank
from site_node.scoring.supervisor import LoadRefused, ProcessConfig, ScorerDown, ScoringProcess
from site_node.scoring.windows import DueWindow, Windows

if TYPE_CHECKING:
    from site_node.daemon import SiteDaemon

__all__ = ["ALARMS_FILE", "BATCH", "Scorer", "ScoringState"]

log = logging.getLogger(__name__)

ALARMS_FILE = "scoring/alarms.json"
BATCH = 64  # windows per request to the scoring process
_RESTART_MIN_S, _RESTART_MAX_S = 1.0, 60.0
ScoringState = Literal["off", "loading", "scoring", "restarting"]


@dataclass
class _Current:
    model: ActiveModel
    rules: list[Rule]
    window: int
    outputs: dict[str, str]  # name -> unit


@dataclass
class _Entry:
    """The last published state of one alarm (device, alarm_id)."""

    device: str
    rule: Rule
    order: int  # the rule's position in its deployment (ties of severity)
    state: RuleState
    model_version: str
    dirty: bool = True  # not yet accepted by the bus


@dataclass
class _Counters:
    windows_scored: int = 0
    predictions: int = 0
    errors: int = 0
    restarts: int = 0
    last_error: str = ""
    score_ms: list[float] = field(default_factory=list)  # recent per-window predict times


class Scorer:
    """See the module docstring. Construct once per daemon (at extension install)."""

    def __init__(self, daemon: SiteDaemon, settings: ScoringSettings | None = None) -> None:
        self._d = daemon
        self._cfg = settings or getattr(daemon.settings, "scoring", None) or ScoringSettings()
        training = daemon.settings.training
        log_cfg = daemon.settings.log
        self._proc_cfg = ProcessConfig(
            tasks_dir=Path(training.tasks_dir) if training and training.tasks_dir else None,
            nice=self._cfg.nice,
            threads=self._cfg.threads,
            memory_limit_mb=self._cfg.memory_limit_mb,
            log_file=log_cfg.file,
            log_format=log_cfg.format,
            verbose=log_cfg.verbose,
        )
        self._alarms_path = daemon.settings.data_dir / ALARMS_FILE
        self._windows = Windows(size=1, max_devices=self._cfg.max_windows, covers=_nothing)
        self._cur: _Current | None = None
        self._state: ScoringState = "off"
        self._proc: ScoringProcess | None = None
        self._restart_at = 0.0
        self._backoff = _RESTART_MIN_S
        self._n = _Counters()
        self._lock = threading.RLock()  # alarms, counters, state
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._requests: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="site-scoring", daemon=True)
        daemon.watch_rows(self._on_row)
        daemon.set_heartbeat_extra(self._heartbeat)
        daemon.on_connected(self._republish)
        daemon.on_stop(self.close)
        self._thread.start()

    # -- API (any thread but the scoring thread) ---------------------------------------

    def activate(self, model: ActiveModel) -> None:
        """Score with ``model`` from now on, replacing the current one.

        Blocks until the scoring process has loaded the task and weights (seconds: the
        first start imports torch), so call it off the daemon loop. Raises ValueError,
        saying why, for bad rules, an unknown task, a code hash that differs from the
        site's task, unreadable weights or rules naming outputs the task lacks; the
        current model then stays.
        """
        texts = model.rules or tuple(self._cfg.rules)
        rules = parse_rules(texts)
        if not model.cadence_s > 0:
            raise ValueError(f"cadence_s must be > 0, not {model.cadence_s}")
        self._check_task(model)
        if not Path(model.weights_path).is_file():
            raise ValueError(f"weights file {model.weights_path} does not exist")
        timeout = self._cfg.load_timeout_s + 10
        self._call(lambda: self._activate(model, rules), timeout)

    def deactivate(self) -> None:
        """Stop scoring; the model's active alarms are published cleared; the scoring
        process is stopped (its memory returns to the machine)."""
        self._call(self._deactivate, 30.0)

    def close(self) -> None:
        """Stop the scoring thread and process (at daemon shutdown; alarms stay)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._requests.put((lambda: None, Future()))
        self._thread.join(10)
        self._stop_process()

    def status(self) -> dict[str, Any]:
        """State, model, counters and the scoring process, for the heartbeat and CLI."""
        with self._lock:
            cur, n, proc = self._cur, self._n, self._proc
            times = sorted(n.score_ms)
            return {
                "state": self._state,
                "deployment_id": cur.model.deployment_id if cur else None,
                "model_version": cur.model.model_version if cur else None,
                "task": cur.model.task if cur else None,
                "cadence_s": cur.model.cadence_s if cur else None,
                "rules": [r.describe() for r in cur.rules] if cur else [],
                "window": cur.window if cur else None,
                "windows": self._windows.stats(),
                "windows_scored": n.windows_scored,
                "predictions": n.predictions,
                "errors": n.errors,
                "last_error": n.last_error or None,
                "restarts": n.restarts,
                "scorer_pid": proc.pid if proc else None,
                "scorer_rss_mb": _round(proc.rss_mb()) if proc else None,
                "score_ms_median": times[len(times) // 2] if times else None,
                "alarms_active": sum(1 for e in self._entries.values() if e.state.active),
            }

    # -- the daemon's hooks ------------------------------------------------------------

    def _on_row(self, device: str, row: Sequence[Sample]) -> None:
        # Source threads: one cheap check when nothing is deployed; else copy and return.
        if self._cur is not None:
            self._windows.add(device, row)

    def _heartbeat(self) -> dict[str, Any]:
        proc = self._proc
        with self._lock:
            return {
                "scoring_state": self._state,
                "scorer_rss_mb": _round(proc.rss_mb()) if proc else None,
                "windows_scored": self._n.windows_scored,
                "scoring_errors": self._n.errors,
            }

    def _republish(self) -> None:
        """On the loop after each connect: every alarm's state again (see the docstring)."""
        with self._lock:
            for entry in self._entries.values():
                entry.dirty = True
            self._flush_alarms()

    # -- the scoring thread ------------------------------------------------------------

    def _call(self, fn: Callable[[], Any], timeout: float) -> Any:
        if threading.current_thread() is self._thread:
            return fn()
        if self._closed.is_set():
            raise RuntimeError("the scorer is closed")
        fut: Future[Any] = Future()
        self._requests.put((fn, fut))
        return fut.result(timeout)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._closed.is_set():
            cur = self._cur
            wait = max(0.0, next_tick - time.monotonic()) if cur else 1.0
            try:
                fn, fut = self._requests.get(timeout=wait)
            except queue.Empty:
                pass
            else:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:
                        fut.set_exception(exc)
                next_tick = time.monotonic()  # a new model: score at once
                continue
            if cur is None:
                continue
            try:
                self._tick(cur)
            except Exception:
                log.exception("scoring round failed")
            now = time.monotonic()
            next_tick += cur.model.cadence_s
            if next_tick < now:  # overran: skip the missed rounds
                next_tick = now + cur.model.cadence_s
        self._stop_process()

    def _activate(self, model: ActiveModel, rules: list[Rule]) -> None:
        self._set_state("loading")
        proc = self._proc
        try:
            if proc is None:
                proc = self._proc = ScoringProcess(self._proc_cfg)
            loaded = proc.load(_load_op(model), self._cfg.load_timeout_s)
        except LoadRefused as exc:
            self._after_failed_load()
            raise ValueError(f"cannot load model {model.model_version}: {exc}") from None
        except (ScorerDown, OSError) as exc:
            self._stop_process()
            self._after_failed_load()
            raise ValueError(f"scoring process failed loading {model.model_version}: {exc}") \
                from None  # fmt: skip
        missing = sorted({r.output for r in rules} - set(loaded.outputs))
        if missing:
            self._after_failed_load()
            raise ValueError(
                f"rule output(s) {missing} are not outputs of task {model.task} "
                f"(it has {sorted(loaded.outputs)})"
            )
        old = self._cur
        self._cur = _Current(model, rules, loaded.window, loaded.outputs)
        self._windows.resize(loaded.window, model.covers)
        self._backoff = _RESTART_MIN_S
        with self._lock:
            saved = self._load_alarms(model)
            same = old is not None and old.model.deployment_id == model.deployment_id
            if not same:
                self._clear_alarms(keep=saved)
            self._entries.update(saved)
            self._save_alarms()
            self._flush_alarms()
        self._set_state("scoring")
        log.info("scoring %s (task %s, window %d, outputs %s) every %g s with %d rule(s); "
                 "loaded in %.2f s", model.model_version, model.task, loaded.window,
                 sorted(loaded.outputs), model.cadence_s, len(rules), loaded.load_s)  # fmt: skip

    def _after_failed_load(self) -> None:
        # The previous model, if any, stays: the process must hold its weights again.
        cur = self._cur
        if cur is None:
            self._stop_process()
            self._set_state("off")
            return
        self._stop_process()
        self._restart_at = 0.0
        self._set_state("restarting")

    def _deactivate(self) -> None:
        self._cur = None
        self._windows.resize(1, _nothing)
        self._windows.clear()
        with self._lock:
            self._clear_alarms(keep={})
            self._save_alarms()
            self._flush_alarms()
        self._stop_process()
        self._set_state("off")
        log.info("scoring stopped")

    def _tick(self, cur: _Current) -> None:
        with self._lock:
            if any(e.dirty for e in self._entries.values()):
                self._flush_alarms()
        proc = self._proc
        if proc is not None and proc.proc.poll() is not None:
            # Died between rounds (killed from outside, OOM): replace it before scoring.
            why = proc.exit_reason()
            log.warning("scoring process %d: %s; restarting it", proc.pid, why)
            self._stop_process()
            with self._lock:
                self._n.restarts += 1
                self._n.last_error = why
        if self._proc is None:
            if time.monotonic() < self._restart_at:
                return
            if not self._restart(cur):
                return
        due = self._windows.due()
        for i in range(0, len(due), BATCH):
            if not self._score(cur, due[i : i + BATCH]):
                break

    def _restart(self, cur: _Current) -> bool:
        self._set_state("restarting")
        try:
            self._proc = ScoringProcess(self._proc_cfg)
            self._proc.load(_load_op(cur.model), self._cfg.load_timeout_s)
        except (ScorerDown, LoadRefused, OSError) as exc:
            self._error(f"restarting the scoring process: {exc}")
            self._stop_process()
            self._restart_at = time.monotonic() + self._backoff
            self._backoff = min(_RESTART_MAX_S, self._backoff * 2)
            return False
        self._set_state("scoring")
        log.info("scoring process %d restarted", self._proc.pid)
        return True

    def _score(self, cur: _Current, batch: list[DueWindow]) -> bool:
        proc = self._proc
        assert proc is not None
        try:
            scored = proc.score(
                Score(tuple((w.device, w.rows) for w in batch)), self._cfg.score_timeout_s
            )
        except ScorerDown as exc:
            log.warning("scoring process %d: %s; restarting it", proc.pid, exc)
            self._stop_process()
            with self._lock:
                self._n.restarts += 1
                self._n.errors += len(batch)
                self._n.last_error = str(exc)
            self._set_state("restarting")
            self._restart_at = time.monotonic() + self._backoff
            self._backoff = min(_RESTART_MAX_S, self._backoff * 2)
            return False
        self._backoff = _RESTART_MIN_S
        for window, result in zip(batch, scored.results, strict=True):
            with self._lock:
                self._n.windows_scored += 1
                self._n.score_ms.append(result.ms)
                del self._n.score_ms[:-256]
            if result.outputs is None:
                self._error(f"device {window.device}: {result.error}")
                continue
            self._publish(cur, window, result.outputs)
        return True

    def _publish(self, cur: _Current, window: DueWindow, values: dict[str, float]) -> None:
        outputs = {
            name: PredictionOutput(value=v, unit=cur.outputs[name])
            for name, v in values.items()
            if name in cur.outputs
        }
        if not outputs:
            self._error(f"device {window.device}: predict returned none of {sorted(cur.outputs)}")
            return
        d, site, model = self._d, self._d.site_id, cur.model
        device, end = window.device, window.end_ms
        try:
            d.send_durable(
                "prediction",
                d.topics.prediction(site, device),
                lambda seq: Prediction(
                    site=site,
                    session=d.session,
                    seq=seq,
                    device=device,
                    model_version=model.model_version,
                    task=model.task,
                    window_end=end,
                    outputs=outputs,
                ),
            )
        except Exception as exc:  # a device name the topic refuses, a stopped outbox
            self._error(f"device {device}: prediction not sent: {exc}")
            return
        with self._lock:
            self._n.predictions += 1
            changed = False
            for order, rule in enumerate(cur.rules):
                value = values.get(rule.output)
                if value is None:
                    continue
                key = (device, rule.alarm_id)
                entry = self._entries.get(key)
                if entry is None or entry.rule != rule:
                    state = entry.state if entry is not None else RuleState()
                    entry = _Entry(device, rule, order, state, model.model_version, dirty=False)
                    self._entries[key] = entry
                if entry.state.update(rule, value, end):
                    entry.dirty, entry.model_version = True, model.model_version
                    changed = True
                    log.info("alarm %s on %s %s (%s, value %g)", rule.alarm_id, device,
                             entry.state.state, rule.text, value)  # fmt: skip
            if changed:
                self._save_alarms()
                self._flush_alarms()

    def _error(self, why: str) -> None:
        with self._lock:
            self._n.errors += 1
            self._n.last_error = why
            n = self._n.errors
        if n <= 10 or n % 100 == 0:
            log.warning("scoring error #%d: %s", n, why)

    def _set_state(self, state: ScoringState) -> None:
        with self._lock:
            self._state = state

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop()

    def _check_task(self, model: ActiveModel) -> None:
        # Reads the registry (hashes files, imports no task): a wrong name or hash is
        # refused before any process starts; the scoring process checks again.
        from site_node.training.tasks.registry import UnknownTaskError, get_task

        try:
            task = get_task(model.task, tasks_dir=self._proc_cfg.tasks_dir)
        except UnknownTaskError as exc:
            raise ValueError(str(exc)) from None
        if task.code_hash != model.code_hash:
            raise ValueError(
                f"task {model.task} code hash at this site is {task.code_hash}; the model "
                f"was deployed for {model.code_hash}"
            )

    # -- alarms (under self._lock) -------------------------------------------------------

    def _clear_alarms(self, keep: dict[tuple[str, str], _Entry]) -> None:
        """Every active alarm not in ``keep`` becomes cleared (published); cleared ones
        not in ``keep`` are forgotten once published."""
        now = now_ms()
        for key, entry in list(self._entries.items()):
            if key in keep:
                continue
            if entry.state.active:
                entry.state = RuleState(active=False, since=now, value=entry.state.value)
                entry.dirty = True
            elif not entry.dirty:
                del self._entries[key]

    def _flush_alarms(self) -> None:
        """Publish dirty entries, each device's top entry last (see the docstring)."""
        by_device: dict[str, list[_Entry]] = {}
        for entry in self._entries.values():
            by_device.setdefault(entry.device, []).append(entry)
        for _device, entries in by_device.items():
            dirty = [e for e in entries if e.dirty]
            if not dirty:
                continue
            entries.sort(key=_retained_order)
            top = entries[-1]
            send = sorted(dirty, key=_retained_order)
            if send[-1] is not top:
                send.append(top)  # the device's retained message stays its top alarm
            for entry in send:
                if self._publish_alarm(entry):
                    entry.dirty = False
                else:
                    entry.dirty = True

    def _publish_alarm(self, entry: _Entry) -> bool:
        d, st = self._d, entry.state
        if st.since == 0:  # never changed: nothing to say
            return True
        msg = Alarm(
            site=d.site_id,
            session=d.session,
            seq=d.outbox.stats().last_seq,
            device=entry.device,
            alarm_id=entry.rule.alarm_id,
            state=st.state,
            severity=entry.rule.severity,
            rule=entry.rule.text[:200],
            value=st.value,
            model_version=entry.model_version,
            since=st.since,
        )
        return d.bus.publish(d.topics.alarm(d.site_id, entry.device), encode(msg), retain=True)

    def _load_alarms(self, model: ActiveModel) -> dict[tuple[str, str], _Entry]:
        """The saved states of ``model``'s deployment (after a restart), else none; the
        saved states of another deployment join the entries, to be cleared."""
        try:
            data = json.loads(self._alarms_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("scoring: alarm states unreadable (%s): starting afresh", exc)
            return {}
        out: dict[tuple[str, str], _Entry] = {}
        for item in data.get("alarms", []):
            try:
                rule = parse_rules([item["rule"]])[0]
                rule = _with_id(rule, item["alarm_id"], item["severity"])
                state = RuleState(bool(item["active"]), int(item["since"]), item.get("value"))
                entry = _Entry(item["device"], rule, int(item.get("order", 0)), state,
                               str(item.get("model_version", "")))  # fmt: skip
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("scoring: saved alarm left out: %s", exc)
                continue
            key = (entry.device, rule.alarm_id)
            if data.get("deployment_id") == model.deployment_id:
                out[key] = entry
            elif key not in self._entries:
                self._entries[key] = entry  # another deployment's: cleared by the caller
        return out

    def _save_alarms(self) -> None:
        cur = self._cur
        items = [
            {
                "device": e.device,
                "alarm_id": e.rule.alarm_id,
                "rule": e.rule.text,
                "severity": e.rule.severity,
                "order": e.order,
                "active": e.state.active,
                "since": e.state.since,
                "value": e.state.value,
                "model_version": e.model_version,
            }
            for e in self._entries.values()
            if e.state.since
        ]
        data = {"deployment_id": cur.model.deployment_id if cur else None, "alarms": items}
        try:
            self._alarms_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._alarms_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self._alarms_path)
        except OSError as exc:
            log.warning("scoring: cannot save alarm states: %s", exc)


def _retained_order(entry: _Entry) -> tuple[int, int, int, int]:
    """Sort key whose last element is the device's retained alarm: cleared ones first
    (latest last), then active ones by severity, the first declared last among equals."""
    st = entry.state
    if not st.active:
        return (0, 0, st.since, 0)
    return (1, severity_rank(entry.rule.severity), 0, -entry.order)


def _with_id(rule: Rule, alarm_id: str, severity: str) -> Rule:
    from dataclasses import replace

    if severity not in ("info", "warning", "critical"):
        raise ValueError(f"bad severity {severity!r}")
    return replace(rule, alarm_id=alarm_id, severity=severity)  # type: ignore[arg-type]


def _load_op(model: ActiveModel) -> Load:
    return Load(model.task, model.code_hash, Path(model.weights_path))


def _nothing(_device: str) -> bool:
    return False


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)
