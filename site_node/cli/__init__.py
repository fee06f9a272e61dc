"""The ``fedmq-site`` command: the factory-side daemon and its local tools.

Exit codes: 0 OK, 1 unexpected error, 2 usage or bad input/config, 3 not found,
4 broker unreachable (only for one-shot commands; ``run`` keeps retrying), 130 interrupted.
"""

from __future__ import annotations

import importlib
import sys

import click

__all__ = ["EXIT", "cli", "main"]

EXIT = {"ok": 0, "error": 1, "usage": 2, "not_found": 3, "broker": 4, "interrupted": 130}

# name -> "module:command". Each command lives in its own module; add one line here.
COMMANDS: dict[str, str] = {
    "run": "site_node.cli.run:run",
    "init": "site_node.cli.init:init",
    "status": "site_node.cli.status:status",
    "deregister": "site_node.cli.deregister:deregister",
    "data": "site_node.cli.data:data",
    "jobs": "site_node.cli.jobs:jobs",
    "approve": "site_node.cli.approve:approve",
    "reject": "site_node.cli.reject:reject",
}


@click.group(
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
        fedmq-site run --config site.toml
    """


def _load_commands() -> None:
    # Command modules keep torch/syft imports inside their functions, so loading them all
    # here stays cheap and a telemetry-only site never imports either.
    for name, target in COMMANDS.items():
        module, _, attr = target.partition(":")
        cli.add_command(getattr(importlib.import_module(module), attr), name)


_load_commands()


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
