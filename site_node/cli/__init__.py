"""The ``fedmq-site`` command: the factory-side daemon and its local tools.

Exit codes: 0 OK, 1 unexpected error, 2 usage or bad input/config, 3 not found,
4 broker unreachable (only for one-shot commands; ``run`` keeps retrying), 130 interrupted.
"""

from __future__ import annotations

import click

from fedmq_runtime.cli import EXIT, LazyGroup, run_main

__all__ = ["EXIT", "cli", "main"]

# name -> "module:command", imported only when the command runs (as ``fedmq`` does), so
# a telemetry-only site never imports torch or syft. One module per command group; add
# one line here.
COMMANDS: dict[str, str] = {
    "run": "site_node.cli.run:run",
    "init": "site_node.cli.init:init",
    "status": "site_node.cli.status:status",
    "deregister": "site_node.cli.deregister:deregister",
    "data": "site_node.cli.data:data",
    "jobs": "site_node.cli.jobs:jobs",
    "deployments": "site_node.cli.deployments:deployments",
    "approve": "site_node.cli.decide:approve",
    "reject": "site_node.cli.decide:reject",
    "task": "site_node.cli.task:task",
    "tasks": "site_node.cli.tasks:tasks",
    "service": "site_node.cli.service:service",
    "doctor": "site_node.cli.doctor:doctor",
    "history": "site_node.cli.history:history",
}


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 ok, 1 error, 2 usage/config, 3 not found, 4 broker unreachable, "
    "130 interrupted.",
)
@click.version_option(package_name="fedmq")
def cli() -> None:
    """fedmq site node: publish a factory site's telemetry and run approved training.

    \b
    Example:
        fedmq-site init > site.toml    # a commented example config
        fedmq-site doctor --config site.toml   # check it, the broker and the coordinator
        fedmq-site run --config site.toml
    """


def main() -> None:
    run_main(cli)
