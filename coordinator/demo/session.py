"""One demo from start to report: the steps ``run_demo`` wraps in its cleanup."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from coordinator.demo.console import Console
from coordinator.demo.live_session import LiveScoring
from coordinator.demo.options import DemoLayout, DemoOptions
from coordinator.demo.procs import Supervisor
from coordinator.demo.report import RMSE_HEADER, plot_learning_curve, rmse_table, write_summary
from coordinator.demo.startup import Federation, start_federation
from coordinator.demo.training import RoundProgress, TrainingThread

__all__ = ["DemoSession", "inspect_commands", "telemetry_counts"]

log = logging.getLogger(__name__)


def inspect_commands(db: Path) -> list[str]:
    """The commands that read what the demo left in its database."""
    return [
        f"fedmq sites --db {db}",
        f"fedmq runs --db {db}",
        f"fedmq telemetry site-1 --db {db} --sensor s11 --limit 10",
        f"fedmq events --db {db}",
        f"fedmq deployments --db {db}",
        f"fedmq predictions site-1 --db {db} --device test-<unit>",
        f"fedmq alarms --db {db}",
    ]


def telemetry_counts(db: Path) -> dict[str, int]:
    """Telemetry samples stored per site (read-only; empty when unreadable)."""
    from coordinator.store.read import DatabaseMissing, NotAFedmqDatabase, SqliteReader

    try:
        reader = SqliteReader.open(db)
    except (DatabaseMissing, NotAFedmqDatabase):
        return {}
    try:
        return reader.telemetry_counts()
    except sqlite3.Error:
        return {}
    finally:
        reader.close()


class DemoSession:
    """Runs the steps; ``interrupt`` and ``finish`` are safe to call at any point."""

    def __init__(
        self, opts: DemoOptions, layout: DemoLayout, supervisor: Supervisor, console: Console
    ) -> None:
        self.opts = opts
        self.layout = layout
        self.supervisor = supervisor
        self.console = console
        self.started = time.monotonic()
        self.federation: Federation | None = None
        self.training: TrainingThread | None = None
        self.startup_s: float | None = None

    def run(self) -> int:
        """Every step; returns the exit code (0, or 5 when the run failed)."""
        self.federation = start_federation(self.opts, self.layout, self.supervisor, self.console)
        self.startup_s = time.monotonic() - self.started
        self._print_dashboard()
        self._print_sites()
        code, result = self._train()
        self._telemetry()
        self._report(result)
        live = None
        model_id = getattr(result, "model_id", None)
        if self.opts.score_engines > 0:
            if code == 0 and model_id:
                live = self._live(str(model_id))
            else:
                self.console.line("live scoring skipped: the run ended without a final model")
        self._summary(result, live)
        if self.opts.keep:
            self._keep()
        return code

    def dashboard_url(self) -> str | None:
        """The web dashboard of the demo's ``fedmq serve`` (announced in its database)."""
        from coordinator.store.read import DatabaseMissing, NotAFedmqDatabase, SqliteReader

        try:
            reader = SqliteReader.open(self.layout.db)
        except (DatabaseMissing, NotAFedmqDatabase):
            return None
        try:
            url = reader.api_url()
        except sqlite3.Error:
            return None
        finally:
            reader.close()
        return None if url is None else f"{url}/fleet"

    def _print_dashboard(self) -> None:
        url = self.dashboard_url()
        if url is not None:
            self.console.line(
                f"dashboard       {url}  (live while the demo runs; --keep leaves it up)"
            )

    def _print_sites(self) -> None:
        from coordinator.cli.sites import sites

        self.console.line("")
        self.console.line(f"$ fedmq sites --db {self.layout.db}")
        assert sites.callback is not None
        sites.callback(db=self.layout.db, state=None, as_json=False, watch=False, every=2.0)
        self.console.line("")

    def _train(self) -> tuple[int, Any]:
        from coordinator.settings import CoordinatorSettings
        from coordinator.training.events import TrainSpec
        from fedmq_runtime.settings import MqttSettings

        assert self.federation is not None
        settings = CoordinatorSettings(
            db=self.layout.db,
            mqtt=MqttSettings(host="127.0.0.1", port=self.federation.port, prefix=self.opts.prefix),
            signing_key_file=self.layout.private_key,
        )
        spec = TrainSpec(
            task=self.opts.task,
            rounds=self.opts.rounds,
            min_sites=max(1, self.opts.sites // 2),
            round_timeout_s=self.opts.round_timeout_s,
            sites=tuple(self.federation.sites),
            epochs=self.opts.epochs,
            wait_sites_s=60.0,
            final_eval=True,  # the last model's federated RMSE for the learning curve
        )
        progress = RoundProgress(self.console, self.opts.rounds)
        self.training = TrainingThread(settings, spec, progress).start()
        result = self.training.wait()
        return int(result.exit_code), result

    def _telemetry(self) -> None:
        counts = telemetry_counts(self.layout.db)
        total = sum(counts.values())
        per_site = ", ".join(f"{s} {n:,}" for s, n in sorted(counts.items()))
        self.console.line(f"telemetry stored: {total:,} samples ({per_site or 'none yet'})")

    def _report(self, result: Any) -> None:
        from coordinator.cli.output import table

        assert self.training is not None
        rows = list(self.training.rows)
        self.console.line("")
        self.console.line(table(rmse_table(rows), RMSE_HEADER))
        self.console.line("")
        png = self.layout.root / "learning_curve.png"
        title = f"fedmq demo: {self.opts.task}, {self.opts.sites} sites, FD001"
        if rows:
            plot_learning_curve(rows, png, title)
            self.console.line(f"learning curve  {png}")

    def _live(self, model_id: str) -> dict[str, Any]:
        """Deploy the final model, replay the test engines, report predicted vs true RUL."""
        assert self.federation is not None
        return LiveScoring(self.opts, self.layout, self.federation, self.console).run(model_id)

    def _summary(self, result: Any, live: dict[str, Any] | None) -> None:
        assert self.training is not None
        rows = list(self.training.rows)
        info = {
            "task": self.opts.task,
            "sites": self.opts.sites,
            "engines": self.opts.engines,
            "epochs": self.opts.epochs,
            "run_id": getattr(result, "run_id", None),
            "state": getattr(result, "state", None),
            "reason": getattr(result, "reason", ""),
            "model_id": getattr(result, "model_id", None),
            "startup_s": self.startup_s,
            "wall_s": time.monotonic() - self.started,
            "db": str(self.layout.db),
            "inspect": inspect_commands(self.layout.db),
            "live": live,
        }
        json_path, md_path = write_summary(self.layout.root, rows, info)
        self.console.line(f"summary         {md_path} ({json_path.name})")
        self.console.line(
            f"wall time       {info['wall_s']:.0f} s (sites live after {self.startup_s:.0f} s)"
        )

    def _keep(self) -> None:
        assert self.federation is not None
        db = self.layout.db
        self.console.line("--keep: broker, coordinator and sites keep running; Ctrl-C stops them.")
        url = self.dashboard_url()
        if url is not None:
            self.console.line(f"dashboard: {url}")
        self.console.line("In another shell, e.g.:")
        self.console.line(f"  fedmq sites --db {db} --watch")
        self.console.line(
            f"  fedmq train --db {db} --task {self.opts.task} --rounds 2 "
            f"--min-sites {self.opts.sites}"
        )
        try:
            while True:
                dead = [c.name for c in self.supervisor.dead()]
                if dead:
                    self.console.line(f"stopped on its own: {', '.join(dead)}; shutting down")
                    return
                time.sleep(1.0)
        except KeyboardInterrupt:
            # The way --keep ends: not an interruption of anything.
            self.console.line("Ctrl-C")

    def interrupt(self) -> None:
        """Ctrl-C: stop a run in progress (it closes its own MQTT client)."""
        if self.training is not None:
            self.training.cancel()
