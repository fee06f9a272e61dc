"""The ``fedmq`` command: coordinator daemon, inspection and training.

Exit codes (also in ``fedmq --help``):
    0 OK, 1 unexpected error, 2 usage or bad input, 3 not found (database, site, run),
    4 broker unreachable, 5 operation failed (e.g. a round missed quorum), 130 interrupted.
"""

from __future__ import annotations

import click

from fedmq_runtime.cli import EXIT, LazyGroup, run_main

__all__ = ["EXIT", "cli", "main"]

# name -> "module:command", imported only when the command runs (as ``fedmq-site``
# does). One module per command group; add one line here.
COMMANDS: dict[str, str] = {
    "broker": "coordinator.cli.broker:broker",
    "schema": "coordinator.cli.schema:schema",
    "serve": "coordinator.cli.serve:serve",
    "sites": "coordinator.cli.sites:sites",
    "site": "coordinator.cli.site:site",
    "telemetry": "coordinator.cli.telemetry:telemetry",
    "events": "coordinator.cli.events:events",
    "predictions": "coordinator.cli.predictions:predictions",
    "alarms": "coordinator.cli.alarms:alarms",
    "dead-letters": "coordinator.cli.dead_letters:dead_letters",
    "train": "coordinator.cli.train:train",
    "runs": "coordinator.cli.runs:runs",
    "run": "coordinator.cli.run:run",
    "jobs": "coordinator.cli.jobs:jobs",
    "models": "coordinator.cli.models:models",
    "deploy": "coordinator.cli.deploy:deploy",
    "deployments": "coordinator.cli.deploy:deployments",
    "demo": "coordinator.cli.demo:demo",
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
    run_main(cli)
