"""``fedmq models``: model versions of training runs; ``models export`` writes one out."""

from __future__ import annotations

from pathlib import Path

import click

from coordinator.cli.output import (
    connect,
    echo_json,
    fmt_ts,
    shown,
    table,
    training_db_option,
)
from fedmq_runtime.cli import NotFound

__all__ = ["models"]

_HEADER = ("MODEL", "RUN", "ROUND", "TASK", "SITES", "SAMPLES", "TEST RMSE", "SIZE", "CREATED")


@click.group(invoke_without_command=True)
@training_db_option
@click.option("--run", "run_id", help="Only models of this run.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def models(ctx: click.Context, db: Path | str, run_id: str | None, as_json: bool) -> None:
    """List model versions (one per aggregated round), newest first.

    \b
    Example:
        fedmq models --db fedmq.db --run run-20250101-120000-ab12
        fedmq models export run-20250101-120000-ab12-r5 --out model.npz
    """
    if ctx.invoked_subcommand is not None:
        return
    reader = connect(db)
    rows = reader.models(run_id)
    reader.close()
    if as_json:
        echo_json(rows)
        return
    body = [
        (
            r["model_id"], r["run_id"], r["round"], r["task"], r["n_sites"], r["n_samples"],
            "-" if r["test_rmse"] is None else f"{r['test_rmse']:.3f}", r["size"],
            fmt_ts(r["created_at"]),
        )
        for r in rows
    ]  # fmt: skip
    click.echo(table(body, _HEADER))


@models.command("export")
@click.argument("model_id")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Write the npz weights here.")  # fmt: skip
@training_db_option
def export(model_id: str, out: Path, db: Path | str) -> None:
    """Write a model version's npz weights to a file (sha256 verified).

    \b
    Example:
        fedmq models export run-20250101-120000-ab12-r5 --out model.npz
    """
    reader = connect(db)
    try:
        raw = reader.model_blob(model_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        reader.close()
    if raw is None:
        raise NotFound(f"no model {model_id!r} in {shown(db)} (see `fedmq models`)")
    out.write_bytes(raw)
    click.echo(f"wrote {out} ({len(raw)} bytes, sha256 verified)")
