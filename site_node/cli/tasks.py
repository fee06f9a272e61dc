"""``fedmq-site tasks``: every task this site can run, with version, source and code hash.

Lists without running any task code (no torch): Python tasks' names and versions are read
from their source. With ``--config`` it uses the site's ``[training] tasks_dir`` and says
which tasks the allow-list pins, even when that table does not validate yet (a listing is
how an operator finds the hash to pin).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import tomllib

from fedmq_runtime.cli import UsageError

__all__ = ["tasks", "training_table"]


def training_table(config: Path | None) -> dict[str, Any]:
    """The raw ``[training]`` table of a site TOML ({} without one), not validated."""
    if config is None:
        return {}
    try:
        raw = tomllib.loads(config.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read config {config}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"invalid TOML in {config}: {exc}") from None
    table = raw.get("training") or {}
    if not isinstance(table, dict):
        raise UsageError(f"{config}: [training] must be a table")
    return table


def _pins(table: dict[str, Any]) -> dict[str, str | None]:
    """name -> pinned hash (None: plain name) of the allow-list, leniently read."""
    from site_node.training.jobs.config import allow_entry

    out: dict[str, str | None] = {}
    for entry in table.get("allow") or []:
        try:
            name, pin = allow_entry(entry)
        except ValueError:
            continue
        out[name] = pin
    for name, pin in (table.get("pins") or {}).items():
        out[str(name)] = str(pin)
    return out


@click.command()
@click.option(
    "--tasks-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of task files (default: [training] tasks_dir of --config).",
)
@click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FEDMQ_CONFIG",
    help="Site TOML: its tasks_dir, and which tasks its allow-list pins.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def tasks(tasks_dir: Path | None, config: Path | None, as_json: bool) -> None:
    """List the tasks this site can run: built-ins, installed packages (entry point group
    fedmq.tasks) and the files of a tasks folder (*.py, package folders, *.toml).

    HASH is the sha256 over every file of the task; pin it in the site's allow-list
    (allow = ["NAME@HASH"]) so that the site runs exactly that code. ALLOWED says "pinned",
    "pinned, CHANGED" (the files no longer match the pin: jobs are refused), "at start"
    (a plain name: the code found when the site starts) or "-". Files that are not
    usable tasks are listed on stderr with the reason.

    \b
    Example:
        fedmq-site tasks
        fedmq-site tasks --tasks-dir ./tasks
        fedmq-site tasks --config site.toml --json
    """
    from site_node.training.tasks import scan

    table = training_table(config)
    if tasks_dir is None and table.get("tasks_dir"):
        tasks_dir = Path(str(table["tasks_dir"]))
    if tasks_dir is not None and not tasks_dir.is_dir():
        raise UsageError(f"tasks folder {tasks_dir} does not exist")
    pins = _pins(table)
    catalog = scan(tasks_dir)
    rows = []
    for task in catalog.tasks.values():
        row = task.describe()
        if task.name not in pins:
            allowed = "-"
        elif pins[task.name] is None:
            allowed = "at start"
        elif pins[task.name] == task.code_hash:
            allowed = "pinned"
        else:
            allowed = "pinned, CHANGED"
        row["allowed"] = allowed
        row["pinned_hash"] = pins.get(task.name)
        rows.append(row)
    missing = sorted(set(pins) - set(catalog.tasks))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "tasks_dir": str(tasks_dir.resolve()) if tasks_dir else None,
                    "tasks": rows,
                    "problems": list(catalog.problems),
                    "allowed_but_missing": missing,
                }
            )
        )
        return
    header = ("NAME", "VERSION", "SOURCE", "ALLOWED", "HASH")
    lines = [header] + [
        (r["name"], r["version"], r["source"], r["allowed"], r["code_hash"]) for r in rows
    ]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        cells = [str(c).ljust(w) for c, w in zip(line, widths, strict=False)]
        click.echo("  ".join([*cells, str(line[-1])]))
    for name in missing:
        click.echo(f"allow-listed but not found: {name}", err=True)
    for problem in catalog.problems:
        click.echo(f"left out: {problem}", err=True)
