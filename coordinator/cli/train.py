"""``fedmq train``: submit a run to ``fedmq serve``'s control API and show its per-site progress."""

from __future__ import annotations

import json
import signal
import sys
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
        from coordinator.training.events import (
            EvaluationClosed,
            EvaluationStarted,
            JobUpdate,
            RoundClosed,
            RoundStarted,
            RunStarted,
        )

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
            if event.evaluation:
                click.echo(f"  {describe_evaluation(event.evaluation)}")
        elif isinstance(event, EvaluationStarted):
            click.echo(f"final evaluation of {event.model_id}: sent to {', '.join(event.sites)}")
            self.lines = {s: f"  {s:<16} sent" for s in event.sites}
            self.drawn = 0
            self._draw()
        elif isinstance(event, EvaluationClosed):
            self.drawn = 0
            click.echo(f"final evaluation: {event.n_results} results ({event.wall_s:.1f} s)")
            click.echo(f"  {describe_evaluation(event.evaluation)}")

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


def describe_evaluation(evaluation: dict[str, Any]) -> str:
    """``federated eval of run-..-r1: auc=0.91 (2 of 3 sites), f1=0.4 (3 of 3 sites)``."""
    parts = []
    for name, m in sorted((evaluation.get("metrics") or {}).items()):
        value = "missing" if m.get("value") is None else f"{m['value']:.4g}"
        parts.append(f"{name}={value} ({m.get('sites')} of {m.get('of_sites')} sites)")
    what = ", ".join(parts) or "no site reported an evaluation"
    return f"federated eval of {evaluation.get('model_id')}: {what}"


_RUN_FLAGS = ("task", "rounds", "min_sites", "round_timeout", "sites", "strategy", "mu",
              "epochs", "lr", "batch_size", "aggregate", "trim", "max_samples", "server_lr",
              "beta1", "beta2", "tau", "final_eval")  # fmt: skip


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

    flags = {k: v for k, v in opts.items() if v is not None}
    try:
        return load_settings(CoordinatorSettings, config, flags)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def _refuse_mqtt_flags(opts: dict[str, Any]) -> None:
    given = [f"--{k.replace('_', '-')}" for k in _MQTT_FLAGS if opts.pop(k, None) is not None]
    if given:
        raise click.UsageError(
            f"fedmq train no longer connects to the broker ({', '.join(given)}): `fedmq serve` "
            "drives the run; point --api (or --db) at it"
        )


_MQTT_FLAGS = ("host", "port", "prefix", "protocol", "signing_key_file")


def _api_url(db: Path | str) -> str:
    """The URL the database's daemon announced (SQLite file or PostgreSQL), else the
    default."""
    import sqlite3

    from coordinator.cli.serve import DEFAULT_HTTP
    from coordinator.store.read import DatabaseMissing, NotAFedmqDatabase, SqliteReader
    from coordinator.store.urls import is_postgres_url

    if is_postgres_url(db):
        from coordinator.store.training_read import announced_api_url

        return announced_api_url(str(db)) or f"http://{DEFAULT_HTTP}"
    try:
        reader = SqliteReader.open(db)
    except (DatabaseMissing, NotAFedmqDatabase, sqlite3.Error):
        return f"http://{DEFAULT_HTTP}"
    try:
        url = reader.api_url()
    except sqlite3.Error:
        url = None
    finally:
        reader.close()
    return url or f"http://{DEFAULT_HTTP}"


class _Follow:
    """Ctrl-C (or SIGTERM) asks the daemon once to cancel; the run's end is still shown."""

    def __init__(self) -> None:
        self.stop = False

    def __call__(self, *_: Any) -> None:
        self.stop = True


def _follow(
    client: Any, run_id: str, display: _Display, ask: _Follow, relocate: Any = None
) -> dict[str, Any]:
    """Show the run's events until it ends; returns its outcome. Rides out a daemon restart
    (the daemon resumes the run; its events then start again)."""
    import time

    from coordinator.api.client import ApiError
    from coordinator.training.events import event_from_json

    after, session, cancelled, down_since = 0, None, False, None
    while True:
        if ask.stop and not cancelled:
            try:
                client.cancel(run_id)
                cancelled = True
            except ApiError as exc:
                click.echo(f"cancel: {exc}", err=True)
        try:
            page = client.events(run_id, after, wait=1.0)
        except ApiError as exc:
            if exc.status not in (0, 404):
                raise
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > _PATIENCE_S:
                raise
            time.sleep(0.5)  # the daemon restarts: it resumes the run by itself
            if relocate is not None:
                client.url = relocate()  # it may announce another port
            continue
        down_since = None
        if session is not None and page.get("session") != session:
            after = 0  # a restarted daemon: the resumed run's events start again
            page = client.events(run_id, 0, wait=0)
        session = page.get("session")
        for data in page["events"]:
            if display.as_json:
                click.echo(json.dumps(data, default=str))
            else:
                event = event_from_json(data)
                if event is not None:
                    display(event)
        after = page["next"]
        if page["outcome"] is not None:
            return dict(page["outcome"])


_PATIENCE_S = 120.0  # how long `fedmq train` waits for a daemon that went away


@click.command()
@click.option("--task", help="Task name, e.g. cmapss-rul (required unless --resume).")
@click.option("--rounds", type=click.IntRange(1), default=5, show_default=True)
@click.option("--min-sites", type=click.IntRange(1), default=3, show_default=True,
              help="Results needed to aggregate a round (quorum).")  # fmt: skip
@click.option("--round-timeout", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Round deadline, s.")  # fmt: skip
@click.option("--sites", help="Comma-separated site ids (default: every live site with the task).")
@click.option("--strategy", type=click.Choice(["fedavg", "fedprox", "fedadam", "fedyogi"]),
              default="fedavg", show_default=True,
              help="fedavg: the round's aggregate is the new model; fedprox: the same, and "
                   "the sites add a proximal term (--mu); fedadam/fedyogi: a server "
                   "optimizer steps along the aggregate's update (--server-lr, --beta1, "
                   "--beta2, --tau), its moments kept across rounds and restarts.")  # fmt: skip
@click.option("--mu", type=click.FloatRange(min=0), help="FedProx proximal weight.")
@click.option("--server-lr", type=click.FloatRange(min=0, min_open=True), default=0.003,
              show_default=True, help="fedadam/fedyogi: server learning rate.")  # fmt: skip
@click.option("--beta1", type=click.FloatRange(0, 1, max_open=True), default=0.9,
              show_default=True, help="fedadam/fedyogi: first-moment decay.")  # fmt: skip
@click.option("--beta2", type=click.FloatRange(0, 1, max_open=True), default=0.99,
              show_default=True, help="fedadam/fedyogi: second-moment decay.")  # fmt: skip
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=1e-3,
              show_default=True, help="fedadam/fedyogi: adaptivity (+ sqrt(v)).")  # fmt: skip
@click.option("--final-eval", is_flag=True, default=False,
              help="After the last round, every run site scores the final model on its "
                   "held-out split (evaluate-only jobs; see `fedmq run`).")  # fmt: skip
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
@click.option("--resume", "resume", metavar="RUN",
              help="Continue RUN (failed or interrupted; a run the daemon still drives is "
                   "followed).")  # fmt: skip
@click.option("--api", help="Control API URL [announced by serve in --db, else "
              "http://127.0.0.1:8321].")  # fmt: skip
@click.option("--token-file", type=click.Path(path_type=Path), envvar="FEDMQ_API_TOKEN_FILE",
              help="API token, the file serve was given [SQLite: DB.token next to the "
                   "database; PostgreSQL: ~/.config/fedmq/api.token] (env "
                   "FEDMQ_API_TOKEN_FILE).")  # fmt: skip
@click.option("--config", type=click.Path(path_type=Path), help="TOML settings (as serve).")
@click.option("--db", metavar="FILE|URL",
              help="serve's database: SQLite file [fedmq.db] or postgresql:// URL; where "
                   "the API URL is announced.")  # fmt: skip
@click.option("--host", hidden=True)
@click.option("--port", hidden=True)
@click.option("--prefix", hidden=True)
@click.option("--protocol", hidden=True)
@click.option("--signing-key", "signing_key_file", hidden=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@click.option("--verbose", is_flag=True, default=None, help="Debug logging.")
def train(
    task: str | None, rounds: int, min_sites: int, round_timeout: float, sites: str | None,
    strategy: str, mu: float | None, server_lr: float, beta1: float, beta2: float,
    tau: float, final_eval: bool, aggregate: str, trim: float, max_samples: int,
    epochs: int | None, lr: float | None,
    batch_size: int | None, wait_sites: float, rejoin_wait: float, resume: str | None,
    api: str | None, token_file: Path | None,
    config: Path | None, as_json: bool, **opts: Any,
) -> None:  # fmt: skip
    """Run federated training rounds over live sites that advertise TASK.

    `fedmq serve` drives the run: this command submits it through the daemon's control
    API and shows its progress. The API's URL is the one serve announced in --db (a
    SQLite file or the same postgresql:// URL serve stores into), or --api. The token is
    read from --token-file, by default the file serve writes: DB.token next to a SQLite
    database; for PostgreSQL ~/.config/fedmq/api.token of the user running serve (on
    another machine or as another user, copy it and give --token-file; serve --token-file
    puts it where you say). Each round closes when all selected
    sites answered or at --round-timeout; it aggregates (--aggregate) with at least
    --min-sites valid results, else the run fails (exit 5). A result with bad weights
    (names, shapes, dtypes, size, non-finite values) or more samples than its site
    registered is excluded from its round with a reason (see `fedmq jobs`). Ctrl-C
    cancels the run's running jobs (exit 130). A run survives a restart of the daemon,
    which resumes it by itself; this command keeps following it.

    Federated evaluation: from round 2 on, every site first scores the global model it
    receives on its held-out split; --final-eval adds an evaluation round for the last
    model. `fedmq run RUN` shows the scores per site and weighted by samples.

    \b
    Example:
        fedmq train --task cmapss-rul --rounds 5 --min-sites 3 --round-timeout 300
        fedmq train --task cmapss-rul --sites a,b,c --strategy fedprox --mu 0.01 --epochs 2
        fedmq train --task cmapss-rul --aggregate trimmed-mean --trim 0.2
        fedmq train --task ai4i-failure --strategy fedadam --server-lr 0.003 --final-eval
        fedmq train --resume run-20250101-120000-ab12 --db fedmq.db
        fedmq train --task cmapss-rul --db postgresql://fedmq@db.plant:5432/fedmq \\
            --token-file /etc/fedmq/api.token
    """
    from coordinator.api.client import ApiClient, ApiError
    from coordinator.api.token import default_token_path, read_token
    from coordinator.cli import EXIT
    from coordinator.cli.serve import _shown
    from coordinator.store.urls import is_postgres_url
    from coordinator.training.events import TrainSpec
    from fedmq_runtime.logs import setup_logging

    _refuse_mqtt_flags(opts)
    settings = _settings(config, opts)
    setup_logging(settings.log_file, settings.log_format, settings.verbose)
    if resume is None and not task:
        raise click.UsageError("--task is required (or --resume RUN)")
    if resume is not None:
        _refuse_run_flags(click.get_current_context())
    db: Path | str = settings.db
    shown = _shown(db)  # a PostgreSQL URL without its password
    token_at = token_file or default_token_path(db)
    token = read_token(token_at)
    on_file = not is_postgres_url(db)
    if token is None and token_file is None and on_file and not Path(db).is_file():
        click.echo(f"Error: no database at {db}: start the coordinator with "
                   f"`fedmq serve --db {db}`", err=True)  # fmt: skip
        sys.exit(EXIT["not_found"])
    if token is None and token_file is not None:
        click.echo(f"Error: no API token in {token_at} (--token-file): give the file "
                   "`fedmq serve --token-file` writes", err=True)  # fmt: skip
        sys.exit(EXIT["usage"])
    if token is None:
        where = "" if on_file else " on this machine, as this user"
        click.echo(f"Error: no API token at {token_at}: start `fedmq serve --db {shown}`"
                   f"{where} (it writes one), or give --token-file (the file serve "
                   "uses)", err=True)  # fmt: skip
        sys.exit(EXIT["usage"])
    client = ApiClient(api or _api_url(db), token)
    ask = _Follow()
    display = _Display(as_json, sys.stdout.isatty())
    try:
        if resume is not None:
            run_id = client.resume(resume)
        else:
            chosen = tuple(s.strip() for s in sites.split(",") if s.strip()) if sites else None
            spec = TrainSpec(
                task=str(task), rounds=rounds, min_sites=min_sites,
                round_timeout_s=round_timeout, sites=chosen, strategy=strategy,  # type: ignore[arg-type]
                mu=mu, epochs=epochs, lr=lr, batch_size=batch_size, wait_sites_s=wait_sites,
                rejoin_wait_s=rejoin_wait, aggregate=aggregate, trim=trim,  # type: ignore[arg-type]
                max_samples=max_samples, server_lr=server_lr, beta1=beta1, beta2=beta2,
                tau=tau, final_eval=final_eval,
            )  # fmt: skip
            run_id = client.submit(spec.to_json())
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, ask)
        relocate = None if api else (lambda: _api_url(db))
        outcome = _follow(client, run_id, display, ask, relocate)
    except ApiError as exc:
        click.echo(f"Error: {exc}", err=True)
        if exc.status == 0:
            click.echo(f"  is `fedmq serve --db {shown}` running?", err=True)
        code = {0: "failed", 401: "usage", 400: "usage", 404: "not_found"}.get(exc.status)
        sys.exit(EXIT[code or "error"])
    if "error" in outcome:
        click.echo(f"Error: {outcome['error']}", err=True)
        sys.exit(EXIT.get(str(outcome.get("code")), EXIT["error"]))
    if not as_json:
        tail = f": {outcome['reason']}" if outcome.get("reason") else ""
        click.echo(f"run {run_id} {outcome['state']}{tail}")
        if outcome.get("model_id"):
            click.echo(
                f"model {outcome['model_id']} "
                f"(fedmq models export {outcome['model_id']} --out m.npz)"
            )
    sys.exit(int(outcome["exit_code"]))
