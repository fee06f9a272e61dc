"""The demo's live scoring step, as the terminal shows it (the parts are in ``live.py``)."""

from __future__ import annotations

import logging
import shlex
import time
from typing import Any

from coordinator.demo.console import Console
from coordinator.demo.live import (
    RULE,
    TABLE_HEADER,
    THRESHOLD,
    Point,
    TestEngine,
    alarms_rows,
    alarms_settled,
    choose_engines,
    collect,
    deploy_final_model,
    finished,
    load_test_engines,
    rmse,
    table_rows,
    wait_until,
    write_replay,
)
from coordinator.demo.options import DemoLayout, DemoOptions
from coordinator.demo.report import plot_rul
from coordinator.demo.sites import FD001_ENGINES, engine_shares
from coordinator.demo.startup import Federation

__all__ = ["LiveScoring"]

log = logging.getLogger(__name__)

# A site's scoring process imports torch when the model is activated: seconds, more on a
# loaded machine.
_ACTIVE_WAIT_S = 150.0


class LiveScoring:
    """Deploy, replay, wait for the last windows, then print and plot; ``run`` returns
    what summary.json keeps of it."""

    def __init__(
        self, opts: DemoOptions, layout: DemoLayout, federation: Federation, console: Console
    ) -> None:
        self.opts = opts
        self.layout = layout
        self.federation = federation
        self.console = console
        self.specs = list(federation.specs.values())

    def run(self, model_id: str) -> dict[str, Any]:
        from coordinator.api.client import ApiError
        from coordinator.cli.deploy import _line

        started = time.monotonic()
        db, line = self.layout.db, self.console.line
        data = load_test_engines()
        # The 100 test engines are other engines than the training ones: split them across
        # the sites whatever --engines, so that each site has engines near failure to show.
        shares = engine_shares(len(self.specs), FD001_ENGINES)
        engines = {
            s.site_id: choose_engines(share, data, self.opts.score_engines, self.opts.score_rows)
            for s, share in zip(self.specs, shares, strict=True)
        }
        devices = {site: [e.device for e in es] for site, es in engines.items() if es}
        line("")
        line(f"live scoring: the final model {model_id} goes to every site, which scores its "
             f"FD001 test engines as they replay (rule '{RULE}', every "
             f"{self.opts.score_cadence_s:g} s)")  # fmt: skip
        for site, names in devices.items():
            args = " ".join(f"--device {d}" for d in names)
            line(f"$ fedmq deploy {model_id} --sites {site} {args} --rule {shlex.quote(RULE)} "
                 f"--cadence {self.opts.score_cadence_s:g} --db {db}")  # fmt: skip
        info: dict[str, Any] = {"model_id": model_id, "rule": RULE,
                                "cadence_s": self.opts.score_cadence_s,
                                "sites": sorted(devices)}  # fmt: skip
        try:
            outcomes, final = deploy_final_model(
                db, model_id, devices, self.opts.score_cadence_s, _ACTIVE_WAIT_S
            )
        except ApiError as exc:
            line(f"deployment refused: {exc}")
            return {**info, "error": str(exc)}
        for o in outcomes:
            if o["outcome"] != "sent":
                line(f"  {o['site']:<16} {o['outcome']}: {o['reason']}")
        for row in final:
            line(_line(row))
        active = {r["site"] for r in final if r["state"] == "active"}
        answered = {r["site"] for r in final}
        for o in outcomes:
            if o["outcome"] == "sent" and o["site"] not in answered:
                line(f"  {o['site']:<16} not active after {_ACTIVE_WAIT_S:g} s: not scored")
        if not active:
            line("no site is scoring: nothing to replay")
            return {**info, "error": "no site activated the model"}
        scoring = {site: es for site, es in engines.items() if site in active}
        for site, es in scoring.items():
            n = write_replay(self.federation.specs[site].test_replay, es)
            units = ", ".join(str(e.unit) for e in es)
            line(f"  {site:<16} replays FD001 test engines {units}: the last {n // len(es)} "
                 f"rows of each, {self.opts.score_rate_hz:g} rows/s")  # fmt: skip
        points = self._wait(scoring)
        wait_until(lambda: alarms_settled(db, points), 30.0)
        points = {site: collect(db, site, es) for site, es in scoring.items()}
        return {**info, **self._report(scoring, points, time.monotonic() - started)}

    def _wait(self, scoring: dict[str, list[TestEngine]]) -> dict[str, dict[str, list[Point]]]:
        db = self.layout.db
        points: dict[str, dict[str, list[Point]]] = {}

        def done() -> bool:
            points.update({site: collect(db, site, es) for site, es in scoring.items()})
            return all(finished(points[site], es) for site, es in scoring.items())

        def progress(elapsed: float) -> None:
            parts = []
            for site, es in scoring.items():
                got = points.get(site, {})
                n = sum(len(got.get(e.device, [])) for e in es)
                parts.append(f"{site} {n}")
            detail = "  ".join(parts)
            self.console.status(f"  predictions stored {elapsed:4.0f}s  {detail}", key=detail)

        if not wait_until(done, self.opts.score_timeout_s, progress):
            self.console.line(
                f"warning: the replay did not finish within {self.opts.score_timeout_s:g} s; "
                "reporting what was scored (see the site logs)"
            )
        return points

    def _report(
        self,
        scoring: dict[str, list[TestEngine]],
        points: dict[str, dict[str, list[Point]]],
        wall_s: float,
    ) -> dict[str, Any]:
        from coordinator.cli.alarms import alarms
        from coordinator.cli.output import table

        db, line = self.layout.db, self.console.line
        alarm_rows = alarms_rows(db)
        active = {(a["site"], a["device"]) for a in alarm_rows if a["state"] == "active"}
        specs = [s for s in self.specs if s.site_id in scoring]
        body = table_rows(specs, scoring, points, active)
        error, n = rmse(points)
        line("")
        line("predicted vs true remaining useful life (cycles) at the end of scored windows:")
        line(table(body, TABLE_HEADER))
        figure = "-" if error is None else f"{error:.1f}"
        line(f"{n} predictions stored; RMSE against the true RUL (capped at 125, as trained): "
             f"{figure} cycles")  # fmt: skip
        line("")
        raised = [a for a in alarm_rows if a["state"] == "active"]
        devices = ", ".join(f"{a['site']}/{a['device']}" for a in raised) or "none"
        line(f"alarms raised: {len(raised)} active of {len(alarm_rows)} ({RULE}): {devices}")
        line(f"$ fedmq alarms --db {db}")
        alarms.main(["--db", str(db)], prog_name="fedmq alarms", standalone_mode=False)
        png = self.layout.root / "rul_predictions.png"
        curves = {
            site: {dev: [(p.cycle, p.true_rul, p.predicted) for p in pts]
                   for dev, pts in per.items()}
            for site, per in points.items()
        }  # fmt: skip
        plot_rul(curves, png, f"fedmq demo: live predictions of the final model ({RULE})",
                 THRESHOLD)  # fmt: skip
        line(f"rul plot        {png}")
        return {
            "header": list(TABLE_HEADER),
            "table": [list(r) for r in body],
            "predictions": n,
            "rmse": error,
            "alarms": len(alarm_rows),
            "alarms_active": len(raised),
            "plot": str(png),
            "wall_s": wall_s,
            "engines": {site: [e.unit for e in es] for site, es in scoring.items()},
            "points": {site: {dev: [[p.cycle, p.true_rul, p.predicted] for p in pts]
                              for dev, pts in per.items()}
                       for site, per in points.items()},
        }  # fmt: skip
