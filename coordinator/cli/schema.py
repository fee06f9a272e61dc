"""``fedmq schema``: export the wire contract for non-Python tools."""

from __future__ import annotations

from pathlib import Path

import click

from fedmq_runtime.cli import UsageError
from schemas import DEFAULT_PREFIX, TopicError, Topics

__all__ = ["schema"]


@click.group()
def schema() -> None:
    """The wire contract: JSON Schemas and an AsyncAPI document.

    \b
    Example:
        fedmq schema export ./contract
    """


@schema.command("export")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--prefix",
    default=DEFAULT_PREFIX,
    show_default=True,
    help="Topic prefix used in the AsyncAPI channel addresses.",
)
def export_command(directory: Path, prefix: str) -> None:
    """Write one JSON Schema per message kind and an AsyncAPI 3.0 document into DIR.

    DIR is created when missing (with its parents). Files: <kind>.schema.json for
    every kind, message.schema.json (any message) and asyncapi.json (every topic with
    QoS, retain and Last Will). The paths written are printed, one per line.

    \b
    Example:
        fedmq schema export contract
        fedmq schema export contract --prefix acme/detroit/pdm/fedmq/v1
    """
    # Imported here so ``fedmq --help`` does not pay for building the schemas.
    from coordinator.admin.schema_export import export

    try:
        Topics(prefix)  # a bad prefix creates nothing
        directory.mkdir(parents=True, exist_ok=True)
        written = export(directory, prefix=prefix)
    except FileExistsError:
        raise UsageError(f"{directory} exists and is not a directory") from None
    except TopicError as exc:
        raise UsageError(f"invalid --prefix: {exc}") from None
    except NotADirectoryError as exc:  # a parent is a file
        raise UsageError(f"cannot create {directory}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot write to {directory}: {exc.strerror or exc}") from None
    for path in written:
        click.echo(str(path))
