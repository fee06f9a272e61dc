"""``fedmq run ID``: one training run and its rounds."""

from __future__ import annotations

from pathlib import Path

import click

from coordinator.cli.output import connect, db_option, echo_json, table
from fedmq_runtime.cli import NotFound

__all__ = ["run"]

_HEADER = ("ROUND", "STATE", "SITES", "RESULTS", "VAL METRICS", "TEST RMSE", "WALL S", "REASON")


@click.command()
@click.argument("run_id")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def run(run_id: str, db: Path, as_json: bool) -> None:
    """Show one training run: its settings and a row per round.

    \b
    Example:
        fedmq run run-20250101-120000-ab12 --db fedmq.db
        fedmq run run-20250101-120000-ab12 --json
    """
    reader = connect(db)
    detail = reader.run_detail(run_id)
    reader.close()
    if detail is None:
        raise NotFound(f"no run {run_id!r} in {db} (see `fedmq runs`)")
    if as_json:
        echo_json(detail)
        return
    click.echo(
        f"run {detail['run_id']}: {detail['task']} {detail['strategy']}"
        f"/{detail.get('aggregate') or 'fedavg'}, "
        f"{detail['rounds_planned']} rounds, min {detail['min_sites']} sites, "
        f"timeout {detail['round_timeout_s']:g} s, state {detail['state']}"
        + (f" ({detail['reason']})" if detail["reason"] else "")
    )
    body = []
    for r in detail["rounds"]:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in (r["metrics"] or {}).items())
        body.append(
            (
                r["round"], r["state"], ",".join(r["selected"] or ()), r["n_results"],
                metrics or "-", "-" if r["test_rmse"] is None else f"{r['test_rmse']:.3f}",
                "-" if r["wall_s"] is None else f"{r['wall_s']:.1f}", r["reason"] or "",
            )
        )  # fmt: skip
    click.echo(table(body, _HEADER))
