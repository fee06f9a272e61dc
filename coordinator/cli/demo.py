"""``fedmq demo``: a whole federation on this machine, end to end, in one command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["demo"]


@click.command()
@click.option(
    "--sites",
    type=click.IntRange(1, 20),
    default=4,
    show_default=True,
    help="Site processes; the FD001 engines are split evenly across them.",
)
@click.option(
    "--rounds", type=click.IntRange(1, 100), default=5, show_default=True, help="Federated rounds."
)
@click.option(
    "--task",
    default="cmapss-rul",
    show_default=True,
    type=click.Choice(["cmapss-rul"]),
    help="Training task.",
)
@click.option(
    "--epochs",
    type=click.IntRange(1, 100),
    default=None,
    help="Local epochs per round [the task's default].",
)
@click.option(
    "--engines",
    type=click.IntRange(2, 100),
    default=100,
    show_default=True,
    help="FD001 training engines used (1..N), split across the sites.",
)
@click.option(
    "--rate",
    "rate_hz",
    type=click.FloatRange(0.1, 1000),
    default=2.0,
    show_default=True,
    help="Telemetry replay, FD001 rows per second per site.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default="fedmq-demo",
    show_default=True,
    help="Demo dir: database, logs, configs, keys, results.",
)
@click.option(
    "--start-timeout",
    "start_timeout_s",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds for all sites to come up.",
)
@click.option(
    "--round-timeout",
    "round_timeout_s",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds a round waits for site results.",
)
@click.option(
    "--score-engines",
    type=click.IntRange(0, 25),
    default=3,
    show_default=True,
    help="After the last round: FD001 test engines each site replays for live scoring with "
    "the deployed final model (0: no deployment).",
)
@click.option(
    "--score-rows",
    type=click.IntRange(31, 400),
    default=100,
    show_default=True,
    help="Replay the last N rows (cycles) of each test engine (the model needs 30).",
)
@click.option(
    "--score-rate",
    "score_rate_hz",
    type=click.FloatRange(0.5, 1000),
    default=20.0,
    show_default=True,
    help="Test replay, rows per second per site (its engines take turns).",
)
@click.option(
    "--score-cadence",
    "score_cadence_s",
    type=click.FloatRange(0.1, 60),
    default=0.5,
    show_default=True,
    help="Seconds between scorings of each engine's window.",
)
@click.option("--keep", is_flag=True, help="Keep broker, coordinator and sites up until Ctrl-C.")
def demo(keep: bool, out: Path, **opts: object) -> None:  # fmt: skip
    """Run a whole federation here: broker, coordinator, N sites, federated training.

    Starts its own Mosquitto on a free loopback port, `fedmq serve` on a fresh database,
    and N `fedmq-site run` processes, each streaming its share of the NASA C-MAPSS FD001
    engines as live telemetry and training the cmapss-rul task on them (signed commands,
    approval auto). Prints the sites, per-round RMSE (federated validation and the FD001
    test set) and writes learning_curve.png. Then it deploys the final model to every
    site (as `fedmq deploy` does, rule "rul < 30"); each site replays the last rows of a
    few FD001 *test* engines as live telemetry and scores them; the demo prints predicted
    versus true remaining useful life per engine (RUL_FD001 gives the truth) and the alarms
    raised (`fedmq alarms`), and writes rul_predictions.png and summary.md/json into --out.
    It stops every process (also on Ctrl-C) and leaves the database for `fedmq
    sites/runs/telemetry/predictions/alarms`.
    Needs the train extra (pip install 'fedmq[train]') and mosquitto.

    \b
    Example:
        fedmq demo                                   # 4 sites, 5 rounds (~4 min)
        fedmq demo --sites 2 --rounds 1 --epochs 1 --out /tmp/demo
        fedmq demo --score-engines 0                 # training only, no deployment
        fedmq demo --keep                            # then: fedmq sites --db fedmq-demo/fedmq.db
    """
    from coordinator.cli import EXIT
    from coordinator.demo import DemoError, DemoOptions, run_demo

    options = DemoOptions(out=out, keep=keep, **opts)  # type: ignore[arg-type]
    if options.engines < 2 * options.sites:
        raise click.UsageError("--engines must be at least 2 per site (train and validation)")
    try:
        code = run_demo(options)
    except DemoError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT.get(exc.code, EXIT["failed"]))
    sys.exit(code)
