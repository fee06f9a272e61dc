"""``fedmq serve``: the coordinator daemon (ingest, acks, liveness, training runs, control API)."""

from __future__ import annotations

import json
import logging
import queue
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["DEFAULT_HTTP", "serve"]

log = logging.getLogger(__name__)

DEFAULT_HTTP = "127.0.0.1:8321"


def _flags(**opts: Any) -> dict[str, Any]:
    # None means "flag not given": leave the lower layers (TOML, env) in charge.
    mqtt = {k: opts.pop(k) for k in ("host", "port", "prefix", "protocol")}
    flags = {k: v for k, v in opts.items() if v is not None}
    mqtt = {k: v for k, v in mqtt.items() if v is not None}
    return {**flags, "mqtt": mqtt} if mqtt else flags


@click.command()
@click.option("--config", "config", type=click.Path(path_type=Path), help="TOML settings file.")
@click.option("--db", metavar="FILE|URL",
              help="SQLite database file [fedmq.db], or a PostgreSQL URL "
                   "(postgresql://user@host:5432/fedmq; needs the postgres extra).")  # fmt: skip
@click.option("--host", help="Broker host [127.0.0.1].")
@click.option("--port", type=int, help="Broker port [1883].")
@click.option("--prefix", help="Topic prefix [fedmq/v1].")
@click.option("--protocol", type=click.Choice(["auto", "5", "3.1.1"]),
              help="MQTT version [auto: 5, else 3.1.1 when the broker refuses 5].")  # fmt: skip
@click.option(
    "--group",
    "ingest_group",
    metavar="NAME",
    help="Run as one of several instances on one PostgreSQL database: the "
    "telemetry is split among the group ($share/NAME/...), one instance "
    "leads (liveness, rebirth, runs). Each needs its own --client-id.",
)
@click.option(
    "--client-id", "client_id", help="MQTT client id, stable across restarts [fedmq-coordinator]."
)
@click.option("--patience", type=float, help="Heartbeat intervals before stale [3].")
@click.option("--batch-size", type=int, help="Most messages per commit [2000].")
@click.option("--batch-time", "batch_time_s", type=float, help="Longest batch wait, s [0.05].")
@click.option("--heartbeat-retention-days", type=float, help="Keep heartbeats this long [7].")
@click.option("--telemetry-retention-days", type=float, help="Keep telemetry this long [90].")
@click.option("--signing-key", "signing_key_file", type=click.Path(path_type=Path))
@click.option("--log-file", type=click.Path(path_type=Path), help="Also log to this file.")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log format [text].")
@click.option("--verbose", is_flag=True, default=None, help="Debug logging.")
@click.option("--print-config", is_flag=True, help="Print effective settings (secrets masked).")
@click.option("--http", "http", envvar="FEDMQ_HTTP", default=DEFAULT_HTTP, show_default=True,
              metavar="HOST:PORT",
              help="Control API address (port 0: any free port, announced in the database). "
                   "Off loopback every request needs the token.")  # fmt: skip
@click.option("--no-http", is_flag=True, help="No control API (runs still resume).")
@click.option("--token-file", type=click.Path(path_type=Path), envvar="FEDMQ_API_TOKEN_FILE",
              help="The control API's token (created 0600 if missing) [SQLite: DB.token "
                   "next to the database; PostgreSQL: ~/.config/fedmq/api.token] (env "
                   "FEDMQ_API_TOKEN_FILE).")  # fmt: skip
def serve(
    config: Path | None, print_config: bool, http: str, no_http: bool,
    token_file: Path | None, **opts: Any,
) -> None:  # fmt: skip
    """Run the coordinator: store what sites publish, ack it, track liveness, drive
    training runs.

    `fedmq train` submits runs through the control API (--http), whose URL serve
    announces in the database; the token that submitting and cancelling need is written
    (0600) to --token-file, by default next to a SQLite database as DB.token. A run left
    running by a stop or a crash is resumed at the next start.

    Settings: TOML file < FEDMQ_... environment (FEDMQ_MQTT__HOST, FEDMQ_DB) < flags.
    Stops cleanly on SIGTERM/Ctrl-C (publishes its retained offline status).

    With --db postgresql://... the same daemon stores into PostgreSQL (telemetry by
    COPY, partitioned by day), training runs included: `fedmq train --db
    postgresql://...` finds the API there, and a run left running is resumed. A
    PostgreSQL database has no file to keep the token next to: it goes to
    ~/.config/fedmq/api.token unless --token-file says where (give every instance and
    client the same file). `fedmq runs`, `run`, `jobs` and `models` take the same URL.
    Deployments, alarm acknowledgements and the dashboard still need SQLite in this
    release (their API routes answer 503), and the other read commands (fedmq sites,
    telemetry, ...) read SQLite only: query PostgreSQL with psql (docs/postgres.md).

    With --group NAME several instances share one PostgreSQL database: the broker splits
    the telemetry among them (an MQTT shared subscription, e.g. Mosquitto), each acks
    what the database holds contiguously, and the instance holding the database's leader
    lock also takes statuses, heartbeats and job messages, tracks liveness and drives
    runs; another takes over within seconds when it dies. A leader that loses its
    database connection exits (code 1) for its supervisor to restart it (docs/scaling.md).

    \b
    Example:
        fedmq serve --db fedmq.db --host broker.plant --port 1883
        fedmq serve --db postgresql://fedmq@db.plant:5432/fedmq \\
            --token-file /etc/fedmq/api.token --http 0.0.0.0:8321
        fedmq serve --db postgresql://fedmq@db.plant:5432/fedmq --no-http
        fedmq serve --db postgresql://fedmq@db.plant:5432/fedmq --no-http \\
            --group plant --client-id fedmq-ingest-1     (and -2, -3 on other hosts)
        fedmq serve --config coordinator.toml --print-config
    """
    from coordinator.settings import CoordinatorSettings
    from fedmq_runtime.cli import UsageError
    from fedmq_runtime.settings import SettingsError, load_settings, masked

    try:
        settings = load_settings(CoordinatorSettings, config, _flags(**opts))
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    if print_config:
        shown = masked(settings)
        shown["db"] = _shown(shown.get("db", ""))  # a password in a postgresql:// URL
        click.echo(json.dumps(shown, indent=2))
        return
    if not no_http:
        from coordinator.api.server import parse_bind

        try:
            parse_bind(http)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    try:
        code = run(settings, http=None if no_http else http, token_file=token_file)
    except SettingsError as exc:  # broker login (credentials, TLS files) that cannot work
        raise UsageError(str(exc)) from None
    sys.exit(code)


def run(
    settings: Any,
    stop: threading.Event | None = None,
    http: str | None = None,
    token_file: Path | None = None,
) -> int:
    """Run until ``stop`` is set (or SIGTERM/SIGINT); return the exit code.

    Args:
        settings: a ``CoordinatorSettings``.
        stop: set it to stop (embedding in a process of one's own).
        http: ``HOST:PORT`` of the control API (None: none; runs still resume).
        token_file: the API token's file (None: ``coordinator.api.token.default_token_path``).

    Raises:
        SettingsError: broker credentials or TLS settings that cannot work (before
            anything connects; the database is closed again).
    """
    from coordinator.bus import Bus, BusOptions
    from coordinator.cli import EXIT
    from coordinator.ingest.ingestor import Ingestor
    from coordinator.ingest.liveness import LivenessChecker
    from coordinator.store.open import open_store
    from coordinator.store.urls import is_postgres_url
    from fedmq_runtime.logs import setup_logging
    from fedmq_runtime.settings import SettingsError

    setup_logging(settings.log_file, settings.log_format, settings.verbose)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    from coordinator.store.training import TRAIN_MIGRATIONS
    from coordinator.training.service import TrainService

    on_postgres = is_postgres_url(settings.db)
    if on_postgres:
        log.info(
            "PostgreSQL store: training runs and the control API as on SQLite; deployments, "
            "alarm acknowledgements and the dashboard need SQLite in this release (their "
            "API routes answer 503)"
        )
    try:
        store = open_store(settings.db, TRAIN_MIGRATIONS)
    except Exception as exc:  # unwritable path, not a database, server unreachable, ...
        log.error("cannot open database %s: %s", _shown(settings.db), exc)
        return EXIT["error"]
    sign = _signer(settings.signing_key_file, settings.mqtt.prefix)
    session = store.begin_session()
    inbound: queue.SimpleQueue[Any] = queue.SimpleQueue()
    group = settings.ingest_group
    options = BusOptions(
        settings.client_id, session, settings.session_expiry_s, settings.receive_maximum,
        key_id=_key_id(settings.signing_key_file),
        announce=not group,  # in a group only the leader is the coordinator sites see
        shared=bool(group),
    )  # fmt: skip
    try:
        if settings.receive == "asyncio":
            from coordinator.bus_asyncio import AsyncBus

            bus: Any = AsyncBus(settings.mqtt, inbound, options)
        else:
            bus = Bus(settings.mqtt, inbound, options)
    except SettingsError:
        store.close()
        raise
    ingest = Ingestor(store, settings, session, bus.publish, bus.ack, inbound, sign=sign)
    checker = LivenessChecker(ingest.tick, settings.liveness_interval_s)
    training = TrainService(settings, bus, session)
    ingest.on_job_messages = training.on_job_messages
    from coordinator.deployment.service import DeployService

    deploy = DeployService(settings, bus, session)
    try:
        # In a group only the leader serves it (and announces its URL), from when it leads.
        api = (
            _start_api(http, settings.db, training, deploy, token_file)
            if http and not group
            else None
        )
    except (OSError, ValueError) as exc:
        log.error("cannot serve the control API on %s: %s", http, exc)
        store.close()
        return EXIT["error"]
    ingest.start()
    leadership = None
    api_box: dict[str, Any] = {}
    if group:

        def api_starter() -> None:
            if http:
                api_box["api"] = _start_api(http, settings.db, training, deploy, token_file)

        leadership = _leadership(settings, ingest, bus, training, stop, api_starter)
        # A session resumed from when this instance led (or ran alone) keeps those
        # subscriptions: drop them until it leads again.
        bus.unsubscribe_at_connect([bus.topics.all_sites(), *bus.topics.all_but_telemetry()])
        bus.subscribe(bus.topics.shared_telemetry(group), 1)
    else:
        bus.subscribe(bus.topics.all_sites(), 1)
    bus.start()
    checker.start()
    if leadership is not None:
        leadership.start()
    else:
        threading.Thread(
            target=_resume_runs, args=(bus, training, stop), name="resume-runs", daemon=True
        ).start()
    log.info(
        "coordinator session %d: db %s, broker %s:%s, prefix %s",
        session,
        _shown(settings.db),
        settings.mqtt.host,
        settings.mqtt.port,
        settings.mqtt.prefix,
    )
    code = EXIT["ok"]
    while not stop.wait(0.2):
        if ingest.failed is not None:
            code = EXIT["error"]
            break
        if group and bus.refused:
            log.error("stopping: %s", bus.refused)
            code = EXIT["broker"]
            break
        if leadership is not None and leadership.lost.is_set():
            ingest.step_down()  # from its next batch: telemetry only
            log.error("stopping: a leader without the lock must not act (restart me)")
            code = EXIT["error"]
            break
    api = api or api_box.get("api")
    if api is not None:
        api.stop()
    training.stop()
    checker.stop()
    ingest.stop()
    # A leader that lost its lock says no "offline": another may be online already.
    bus.stop(announce=leadership is None or not leadership.lost.is_set())
    if leadership is not None:
        leadership.stop()
    store.close()
    log.info("coordinator stopped (%d messages stored)", ingest.stored_messages)
    return code


def _leadership(
    settings: Any,
    ingest: Any,
    bus: Any,
    training: Any,
    stop: threading.Event,
    start_api: Callable[[], None],
) -> Any:
    """The leader election of an ingest group: the winner takes the sites' other topics,
    becomes the coordinator they see (Will, retained status), serves the control API and
    resumes the runs the previous leader left running."""
    from coordinator.leadership import Leadership
    from coordinator.store.leader import LeaderLock

    def lead() -> None:
        ingest.lead()  # before the subscriptions: their messages come after the switch
        for topic in bus.topics.all_but_telemetry():
            bus.subscribe(topic, 1)
        bus.lead()
        start_api()
        threading.Thread(
            target=_resume_runs, args=(bus, training, stop), name="resume-runs", daemon=True
        ).start()

    lock = LeaderLock(str(settings.db), f"fedmq-leader {settings.mqtt.prefix}")
    return Leadership(lock, lead)


def _start_api(
    http: str, db: Path | str, training: Any, deploy: Any = None, token_file: Path | None = None
) -> Any:
    """Bind the control API (a busy port is an error at once) and announce its URL (in
    the database: SQLite or PostgreSQL)."""
    from coordinator.api.app import make_app
    from coordinator.api.server import ApiServer, is_loopback, parse_bind
    from coordinator.api.token import default_token_path, ensure_token
    from coordinator.store.training import TrainDb

    host, port = parse_bind(http)
    loopback = is_loopback(host)
    token = ensure_token(token_file or default_token_path(db))
    server = ApiServer(make_app(training, token, loopback, deploy=deploy), host, port)
    tdb = TrainDb(db)
    try:
        tdb.set_api_url(server.url)
    finally:
        tdb.close()
    server.start()
    log.info("control API on %s (%s)", server.url,
             "token for changes" if loopback else "token for every request")  # fmt: skip
    return server


def _shown(db: Any) -> str:
    """``db`` for logs: a PostgreSQL URL without its password."""
    return re.sub(r"^(postgres(?:ql)?://[^:/@]+):[^@]*@", r"\1:***@", str(db))


def _resume_runs(bus: Any, training: Any, stop: threading.Event) -> None:
    """Once the broker is connected, resume the runs a stop or a crash left running."""
    while not bus.connected.wait(0.5):
        if stop.is_set():
            return
    try:
        training.resume_all()
    except Exception:
        log.exception("could not resume the runs left running")


def _key_id(path: Path | None) -> str:
    """The id of the signing key's public half, announced in the retained status."""
    if path is None:
        return ""
    from cryptography.hazmat.primitives import serialization

    from coordinator.admin import signing
    from schemas.commands import public_key_id

    public = signing.load_private_key(path).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public_key_id(pem)


def _signer(path: Path | None, prefix: str) -> Any:
    if path is None:
        return None
    from coordinator.admin import signing

    key = signing.load_private_key(path)
    return lambda cmd: signing.sign(cmd, key, prefix)
