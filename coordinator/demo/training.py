"""The demo's federated run: submitted to the demo's ``fedmq serve`` through its control
API and followed on a worker thread, as ``fedmq train`` does.

The run is followed on a thread so that Ctrl-C on the main thread can ask the daemon to
cancel it (its ``stop`` event) and wait for the cancel to go out before the processes go
down. Its events become a progress display: one status line per round, a line per closed
round. Each aggregated round's model is scored on the FD001 test set by the site's code
(``coordinator/demo/scoring.py``) before its line is shown.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coordinator.demo.console import Console
from coordinator.demo.report import RoundRow
from coordinator.demo.scoring import TestSetScorer

__all__ = ["SCORED_TASKS", "RoundProgress", "TrainingThread", "federated_rmse", "round_row"]

# Tasks whose models the site scores on a shipped test set (`fedmq-site task evaluate`).
SCORED_TASKS = frozenset({"cmapss-rul"})


def federated_rmse(evaluation: dict[str, Any] | None) -> float | None:
    """The global model's RMSE on the sites' held-out engines (federated evaluation,
    weighted by samples), from a ``RoundClosed``/``EvaluationClosed`` event's evaluation."""
    metrics = (evaluation or {}).get("metrics") or {}
    for key in ("val_rmse", "rmse"):
        value = (metrics.get(key) or {}).get("value")
        if isinstance(value, (int, float)):
            return float(value)
    return None


def round_row(event: Any) -> RoundRow:
    """A report row from a ``RoundClosed`` event; its model's federated RMSE comes with a
    later event (the next round's, or the final evaluation's): :meth:`RoundProgress.scored`.
    """
    return RoundRow(
        round=int(event.round),
        state=str(event.state),
        n_results=int(event.n_results),
        val_rmse=None,
        test_rmse=None if event.test_rmse is None else float(event.test_rmse),
        wall_s=float(event.wall_s) if event.wall_s else None,
        model_id=getattr(event, "model_id", None),
    )


class RoundProgress:
    """Turns training events into console output."""

    def __init__(self, console: Console, rounds: int) -> None:
        self.console = console
        self.rounds = rounds
        self.jobs: dict[str, str] = {}
        self.rows: list[RoundRow] = []
        self.run_id: str | None = None

    def __call__(self, event: Any) -> None:
        kind = getattr(event, "kind", "")
        if kind == "run_started":
            self.run_id = event.run_id
            self.console.line(
                f"run {event.run_id}: task {event.task} on {', '.join(event.sites)} "
                f"({event.rounds} rounds)"
            )
        elif kind == "round_started":
            self.jobs = {site: "sent" for site in event.sites}
            self._show(event.round)
        elif kind == "job":
            pct = "" if event.progress is None else f" {100 * event.progress:.0f}%"
            self.jobs[event.site] = f"{event.state}{pct}" + (" (late)" if event.late else "")
            self._show(event.round, key_state=event.state)
        elif kind == "round_closed":
            row = round_row(event)
            self.rows.append(row)
            why = f" ({event.reason})" if event.reason else ""
            self.console.line(
                f"round {event.round}/{self.rounds} {event.state}{why}: "
                f"{event.n_results} site results, FD001 test RMSE {_fmt(row.test_rmse)}, "
                f"{event.wall_s:.1f} s"
            )
            self.scored(event.evaluation)
        elif kind == "evaluation_started":
            self.jobs = {site: "sent" for site in event.sites}
            self.console.status(f"  final evaluation of {event.model_id}", key="final")
        elif kind == "evaluation_closed":
            self.scored(event.evaluation)
        elif kind == "run_finished" and event.state != "done":
            self.console.line(f"run {event.run_id} {event.state}: {event.reason}")

    def scored(self, evaluation: dict[str, Any] | None) -> None:
        """Fill in the federated RMSE of the model ``evaluation`` measured."""
        rmse = federated_rmse(evaluation)
        model_id = (evaluation or {}).get("model_id")
        if rmse is None or model_id is None:
            return
        for i, row in enumerate(self.rows):
            if row.model_id == model_id:
                self.rows[i] = dataclasses.replace(row, val_rmse=rmse)
                metric = (evaluation or {}).get("metrics", {}).get("rmse") or {}
                self.console.line(
                    f"  round {row.round}'s global model: federated val RMSE {rmse:.2f} "
                    f"({metric.get('sites')} of {metric.get('of_sites')} sites)"
                )

    def _show(self, rnd: int, key_state: str = "") -> None:
        detail = "  ".join(f"{site} {state}" for site, state in sorted(self.jobs.items()))
        key = " ".join(s.split()[0] for s in self.jobs.values())
        self.console.status(f"  round {rnd}/{self.rounds}  {detail}", key=f"{rnd} {key}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


class TrainingThread:
    """Submit ``spec`` to the daemon serving ``settings.db`` and follow it on a thread."""

    def __init__(self, settings: Any, spec: Any, progress: RoundProgress) -> None:
        self.settings = settings
        self.spec = spec
        self.progress = progress
        self.stop = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        db = Path(settings.db)
        self.scorer = TestSetScorer(db, db.parent / "models", self.stop)
        self._thread = threading.Thread(target=self._run, name="demo-training", daemon=True)

    def _run(self) -> None:
        try:
            self.result = self._follow()
        except BaseException as exc:  # reported on the main thread
            self.error = exc

    def _follow(self) -> Any:
        import sqlite3
        import time
        from pathlib import Path

        from coordinator.api.client import ApiClient, ApiError
        from coordinator.api.token import read_token, token_path
        from coordinator.store.training_read import api_url
        from coordinator.training.events import RunResult, TrainError, event_from_json

        db = Path(self.settings.db)
        url, deadline = None, time.monotonic() + 30
        while url is None and time.monotonic() < deadline:  # serve announces it at start
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                url = api_url(conn)
            finally:
                conn.close()
            if url is None:
                time.sleep(0.2)
        if url is None:
            raise TrainError(f"the coordinator announced no control API in {db}", "error")
        client = ApiClient(url, read_token(token_path(db)))
        try:
            run_id = client.submit(self.spec.to_json())
            after, cancelled = 0, False
            while True:
                if self.stop.is_set() and not cancelled:
                    cancelled = client.cancel(run_id) or True
                page = client.events(run_id, after, wait=1.0)
                for data in page["events"]:
                    event = event_from_json(data)
                    if event is not None:
                        self.progress(self._scored(event))
                after = page["next"]
                out = page["outcome"]
                if out is not None:
                    break
        except ApiError as exc:
            raise TrainError(str(exc), "failed") from None
        if "error" in out:
            raise TrainError(str(out["error"]), str(out.get("code") or "error"))
        return RunResult(run_id, out["state"], out["reason"], out["model_id"], (),
                         bool(out["interrupted"]))  # fmt: skip

    def _scored(self, event: Any) -> Any:
        """A closed round's event with its model's test RMSE filled in (for the report)."""
        if (
            getattr(event, "kind", "") != "round_closed"
            or event.state != "aggregated"
            or not event.model_id
            or self.spec.task not in SCORED_TASKS
        ):
            return event
        rmse = self.scorer.rmse(self.spec.task, event.model_id)
        return dataclasses.replace(event, test_rmse=rmse)

    def start(self) -> TrainingThread:
        self._thread.start()
        return self

    def wait(self) -> Any:
        """Join (Ctrl-C still reaches the main thread); re-raise the run's error."""
        while self._thread.is_alive():
            self._thread.join(0.2)
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self, timeout: float = 20.0) -> None:
        """Ask the run to stop and give it ``timeout`` s to do so."""
        self.stop.set()
        self._thread.join(timeout)

    @property
    def rows(self) -> Sequence[RoundRow]:
        return self.progress.rows
