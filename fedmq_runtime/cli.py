"""What both command lines share: exit codes, one-line errors, lazy command registration
and the ``main`` that turns errors into exit codes.

The one module of ``fedmq_runtime`` that imports click (both CLIs depend on it; neither
daemon imports this module). Errors, all :class:`click.ClickException` with a named
exit code, shown as one line without a traceback::

    click.ClickException   exit 1 (EXIT["error"]): anything else the user can act on
    ├── UsageError        exit 2: bad input, settings or state for this command
    ├── NotFound          exit 3: a database, site, run or job that does not exist
    ├── BrokerUnreachable exit 4: the broker did not answer (one-shot commands)
    └── OperationFailed   exit 5: the operation ran and failed (e.g. a round missed quorum)
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

__all__ = [
    "EXIT",
    "BrokerUnreachable",
    "LazyGroup",
    "NotFound",
    "OperationFailed",
    "UsageError",
    "run_main",
]

EXIT = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    "not_found": 3,
    "broker": 4,
    "failed": 5,
    "interrupted": 130,
}


class UsageError(click.ClickException):
    """Bad input, settings or state for this command: exit 2."""

    exit_code = EXIT["usage"]


class NotFound(click.ClickException):
    """A database, site, run or job that does not exist: exit 3."""

    exit_code = EXIT["not_found"]


class BrokerUnreachable(click.ClickException):
    """The broker did not answer: exit 4."""

    exit_code = EXIT["broker"]


class OperationFailed(click.ClickException):
    """The operation ran and failed: exit 5."""

    exit_code = EXIT["failed"]


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs.

    ``lazy`` maps a command name to ``"module:attribute"``; ``fedmq sites`` must answer in
    well under 0.3 s, so nothing imports torch, syft or paho unless its command needs them.
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


def run_main(group: click.Group) -> None:
    """Run ``group``: a click error exits with one line and its code, Ctrl-C with 130."""
    try:
        group.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(EXIT["interrupted"])
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
