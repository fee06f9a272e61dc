"""``fedmq-site run``: the site daemon."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fedmq_runtime.cli import UsageError
from fedmq_runtime.settings import masked
from site_node.cli.options import settings_from, site_options

__all__ = ["run"]


@click.command()
@site_options
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--log-format", type=click.Choice(["text", "json"]))
@click.option("--verbose", "-v", is_flag=True, default=None, help="Debug logging.")
@click.option(
    "--print-config", is_flag=True, help="Print the effective settings (secrets masked) and exit."
)
def run(
    config: Path | None,
    site_id: str | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    log_file: Path | None,
    log_format: str | None,
    verbose: bool | None,
    print_config: bool,
) -> None:
    """Run the site: publish status, registration, heartbeats and telemetry.

    Keeps retrying while the broker is down; SIGTERM or Ctrl-C publishes the offline
    status and exits 0. Every setting is also an environment variable (FEDMQ_SITE_ID,
    FEDMQ_MQTT__HOST, FEDMQ_OUTBOX__MAX_ROWS, ...); flags win over both.

    \b
    Example:
        fedmq-site run --config site.toml
        FEDMQ_MQTT__PASSWORD_FILE=/run/secrets/mqtt fedmq-site run -c site.toml --log-format json
    """
    log = {"file": log_file, "format": log_format, "verbose": verbose}
    settings = settings_from(config, site_id, host, port, data_dir, log=log)
    if print_config:
        click.echo(json.dumps(masked(settings), indent=2))
        return
    _fewer_malloc_arenas()
    from fedmq_runtime.logs import setup_logging
    from site_node.bus import BusError
    from site_node.daemon import SiteDaemon
    from site_node.logfilters import install_site_log_filters

    setup_logging(settings.log.file, settings.log.format, settings.log.verbose)
    install_site_log_filters()  # syft's start-up CRITICAL line, progress bars, ANSI
    try:
        daemon = SiteDaemon(settings)
    except (OSError, ValueError, BusError) as exc:
        raise UsageError(str(exc)) from None
    sys.exit(daemon.run())


def _fewer_malloc_arenas(arenas: int = 2) -> None:
    """Hold glibc to ``arenas`` malloc arenas before the daemon starts its threads.

    By default every thread that allocates gets an arena of its own (up to 8 per core),
    and each keeps the pages it once used; the daemon's dozen mostly idle threads need no
    such parallelism. Where there is no glibc, nothing changes.
    """
    import contextlib
    import ctypes

    m_arena_max = -8  # from glibc's malloc.h
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(m_arena_max, arenas)
