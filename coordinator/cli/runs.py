"""``fedmq runs``: training runs, newest first."""

from __future__ import annotations

from pathlib import Path

import click

from coordinator.cli.output import connect, echo_json, fmt_ts, table, training_db_option

__all__ = ["runs"]

_HEADER = ("RUN", "TASK", "STRATEGY", "STATE", "ROUNDS", "SITES", "TEST RMSE", "CREATED", "REASON")


@click.command()
@training_db_option
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def runs(db: Path | str, limit: int, as_json: bool) -> None:
    """List training runs (started by `fedmq train`), newest first.

    \b
    Example:
        fedmq runs --db fedmq.db
        fedmq runs --json
    """
    reader = connect(db)
    rows = reader.runs(limit)
    reader.close()
    if as_json:
        echo_json(rows)
        return
    body = [
        (
            r["run_id"], r["task"], r["strategy"], r["state"],
            f"{r['aggregated']}/{r['rounds']}", ",".join(r["sites"] or ()),
            "-" if r["test_rmse"] is None else f"{r['test_rmse']:.3f}",
            fmt_ts(r["created_at"]), r["reason"] or "",
        )
        for r in rows
    ]  # fmt: skip
    click.echo(table(body, _HEADER))
