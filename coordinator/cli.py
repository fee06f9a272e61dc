"""The ``fedmq`` command: coordinator daemon, inspection and training.

Exit codes (also in ``fedmq --help``):
    0 OK, 1 unexpected error, 2 usage or bad input, 3 not found (database, site, run),
    4 broker unreachable, 5 operation failed (e.g. a round missed quorum), 130 interrupted.
"""

from __future__ import annotations

import sys

import click

from coordinator.lazy_group import LazyGroup

__all__ = ["EXIT", "cli", "main"]

EXIT = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    "not_found": 3,
    "broker": 4,
    "failed": 5,
    "interrupted": 130,
}

# name -> "module:command". Each command lives in its own module; add one line here.
COMMANDS: dict[str, str] = {
    "broker": "coordinator.cli_broker:broker",
    "schema": "coordinator.cli_schema:schema",
    "serve": "coordinator.cli_serve:serve",
    "sites": "coordinator.cli_sites:sites",
    "site": "coordinator.cli_site:site",
    "telemetry": "coordinator.cli_telemetry:telemetry",
    "events": "coordinator.cli_events:events",
    "dead-letters": "coordinator.cli_dead_letters:dead_letters",
    "train": "coordinator.cli_train:train",
    "runs": "coordinator.cli_runs:runs",
    "run": "coordinator.cli_run:run",
    "jobs": "coordinator.cli_jobs:jobs",
    "models": "coordinator.cli_models:models",
    "demo": "coordinator.cli_demo:demo",
}


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 broker unreachable, "
    "5 operation failed, 130 interrupted.",
)
@click.version_option(package_name="fedmq")
def cli() -> None:
    """fedmq coordinator: federated predictive maintenance over MQTT.

    \b
    Example:
        fedmq serve --db fedmq.db      # ingest, acks, liveness
        fedmq sites                    # which sites are live
    """


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT["interrupted"])
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT["interrupted"])
