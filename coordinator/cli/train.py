"""``fedmq train``: run (or resume) federated training rounds and show per-site progress."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

__all__ = ["train"]


class _Display:
    """Per-site progress: a live line per site on a TTY, plain lines otherwise, or JSON."""

    def __init__(self, as_json: bool, live: bool) -> None:
        self.as_json, self.live = as_json, live and not as_json
        self.lines: dict[str, str] = {}
        self.drawn = 0

    def __call__(self, event: Any) -> None:
        from coordinator.training.events import JobUpdate, RoundClosed, RoundStarted, RunStarted

        if self.as_json:
            click.echo(json.dumps(event.to_json(), default=str), nl=True)
            return
        if isinstance(event, RunStarted):
            what = f"resumed at round {event.resumed_at_round}" if event.resumed_at_round else ""
            click.echo(f"run {event.run_id}: {event.task} x {event.rounds} rounds on "
                       f"{', '.join(event.sites)} {what}".rstrip())  # fmt: skip
            if event.note:
                click.echo(f"note: {event.note}")
        elif isinstance(event, RoundStarted):
            click.echo(f"round {event.round}: sent to {', '.join(event.sites)}")
            self.lines = {s: f"  {s:<16} sent" for s in event.sites}
            self.drawn = 0
            self._draw()
        elif isinstance(event, JobUpdate):
            pct = f" {event.progress:.0%}" if event.progress is not None else ""
            why = f" ({event.reason})" if event.reason else ""
            late = " [late]" if event.late else ""
            line = f"  {event.site:<16} {event.state}{pct}{why}{late}"
            if self.live and event.site in self.lines and not event.late:
                self.lines[event.site] = line
                self._draw()
            else:
                click.echo(f"round {event.round}{line}")
        elif isinstance(event, RoundClosed):
            self.drawn = 0
            metrics = " ".join(f"{k}={v:.4g}" for k, v in event.metrics.items())
            rmse = f" test_rmse={event.test_rmse:.3f}" if event.test_rmse is not None else ""
            click.echo(f"round {event.round} {event.state}: {event.n_results} results "
                       f"{metrics}{rmse} ({event.wall_s:.1f} s)")  # fmt: skip
            if event.reason:
                click.echo(f"  {event.reason}")

    def _draw(self) -> None:
        if not self.live:
            return
        out = sys.stdout
        if self.drawn:
            out.write(f"\x1b[{self.drawn}F")
        for line in self.lines.values():
            out.write("\x1b[2K" + line + "\n")
        out.flush()
        self.drawn = len(self.lines)


_RUN_FLAGS = ("task", "rounds", "min_sites", "round_timeout", "sites", "strategy", "mu",
              "epochs", "lr", "batch_size", "aggregate", "trim", "max_samples")  # fmt: skip


def _refuse_run_flags(ctx: click.Context) -> None:
    """--resume continues a run as it was stored; a flag that would change it is an error
    rather than silently ignored."""
    given = [
        "--" + name.replace("_", "-")
        for name in _RUN_FLAGS
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    ]
    if given:
        raise click.UsageError(
            f"--resume continues the run with its stored settings; drop {', '.join(given)}"
        )


def _settings(config: Path | None, opts: dict[str, Any]) -> Any:
    from coordinator.settings import CoordinatorSettings
    from fedmq_runtime.settings import SettingsError, load_settings

    mqtt = {k: opts.pop(k) for k in ("host", "port", "prefix") if opts.get(k) is not None}
    flags = {k: v for k, v in opts.items() if v is not None}
    try:
        return load_settings(
            CoordinatorSettings, config, {**flags, "mqtt": mqtt} if mqtt else flags
        )
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


@click.command()
@click.option("--task", help="Task name, e.g. cmapss-rul (required unless --resume).")
@click.option("--rounds", type=click.IntRange(1), default=5, show_default=True)
@click.option("--min-sites", type=click.IntRange(1), default=3, show_default=True,
              help="Results needed to aggregate a round (quorum).")  # fmt: skip
@click.option("--round-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Round deadline, s.")  # fmt: skip
@click.option("--sites", help="Comma-separated site ids (default: every live site with the task).")
@click.option("--strategy", type=click.Choice(["fedavg", "fedprox"]), default="fedavg",
              show_default=True)  # fmt: skip
@click.option("--mu", type=click.FloatRange(min=0), help="FedProx proximal weight.")
@click.option("--aggregate", type=click.Choice(["fedavg", "median", "trimmed-mean"]),
              default="fedavg", show_default=True,
              help="How results combine: sample-weighted mean, or robust to an outlier site "
                   "(coordinate-wise median, trimmed mean).")  # fmt: skip
@click.option("--trim", type=click.FloatRange(0, 0.5, max_open=True), default=0.2,
              show_default=True,
              help="trimmed-mean: fraction of values dropped at each end.")  # fmt: skip
@click.option("--max-samples", type=click.IntRange(1), default=10_000_000, show_default=True,
              help="Clip the sample count of a site that registered no dataset rows.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(1), help="Local epochs per round.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate.")
@click.option("--batch-size", type=click.IntRange(1), help="Local batch size.")
@click.option("--wait-sites", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Wait this long for enough live sites, s.")  # fmt: skip
@click.option(
    "--rejoin-wait",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Before each later round, wait this long for run sites that are down, s.",
)
@click.option("--resume", "resume", metavar="RUN", help="Continue RUN after a crash.")
@click.option("--config", type=click.Path(path_type=Path), help="TOML settings (as serve).")
@click.option("--db", type=click.Path(path_type=Path), help="SQLite database [fedmq.db].")
@click.option("--host", help="Broker host [127.0.0.1].")
@click.option("--port", type=int, help="Broker port [1883].")
@click.option("--prefix", help="Topic prefix [fedmq/v1].")
@click.option("--signing-key", "signing_key_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--verbose", is_flag=True, default=None, help="Debug logging.")
def train(
    task: str | None, rounds: int, min_sites: int, round_timeout: float, sites: str | None,
    strategy: str, mu: float | None, aggregate: str, trim: float, max_samples: int,
    epochs: int | None, lr: float | None,
    batch_size: int | None, wait_sites: float, rejoin_wait: float, resume: str | None,
    config: Path | None, as_json: bool, **opts: Any,
) -> None:  # fmt: skip
    """Run federated training rounds over live sites that advertise TASK.

    Needs `fedmq serve` running on the same database (it stores the sites' results) and
    the command-signing key (signing_key_file; `fedmq broker init` generates it). On a
    broker that binds client ids to usernames (the shipped configs) it needs its own
    account: --config deploy/coordinator/train-credentials.toml, not serve's. Each
    round closes when all selected sites answered or at --round-timeout; it aggregates
    (--aggregate) with at least --min-sites valid results, else the run fails (exit 5).
    A result with bad weights (names, shapes, dtypes, size, non-finite values) or more
    samples than its site registered is excluded from its round with a reason (see
    `fedmq jobs`). Ctrl-C cancels running jobs (exit 130).

    \b
    Example:
        fedmq train --task cmapss-rul --rounds 5 --min-sites 3 --round-timeout 300
        fedmq train --task cmapss-rul --sites a,b,c --strategy fedprox --mu 0.01 --epochs 2
        fedmq train --task cmapss-rul --aggregate trimmed-mean --trim 0.2
        fedmq train --resume run-20250101-120000-ab12 --db fedmq.db
    """
    from coordinator.cli import EXIT
    from coordinator.training.driver import resume_training, run_training
    from coordinator.training.events import TrainError, TrainSpec
    from fedmq_runtime.logs import setup_logging

    settings = _settings(config, opts)
    setup_logging(settings.log_file, settings.log_format, settings.verbose)
    if resume is None and not task:
        raise click.UsageError("--task is required (or --resume RUN)")
    if resume is not None:
        _refuse_run_flags(click.get_current_context())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    display = _Display(as_json, sys.stdout.isatty())
    try:
        if resume is not None:
            result = resume_training(settings, resume, display, stop)
        else:
            chosen = tuple(s.strip() for s in sites.split(",") if s.strip()) if sites else None
            spec = TrainSpec(
                task=str(task), rounds=rounds, min_sites=min_sites,
                round_timeout_s=round_timeout, sites=chosen, strategy=strategy,  # type: ignore[arg-type]
                mu=mu, epochs=epochs, lr=lr, batch_size=batch_size, wait_sites_s=wait_sites,
                rejoin_wait_s=rejoin_wait, aggregate=aggregate, trim=trim,  # type: ignore[arg-type]
                max_samples=max_samples,
            )  # fmt: skip
            result = run_training(settings, spec, display, stop)
    except TrainError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT[exc.code])
    if not as_json:
        tail = f": {result.reason}" if result.reason else ""
        click.echo(f"run {result.run_id} {result.state}{tail}")
        if result.model_id:
            click.echo(
                f"model {result.model_id} (fedmq models export {result.model_id} --out m.npz)"
            )
    sys.exit(result.exit_code)
