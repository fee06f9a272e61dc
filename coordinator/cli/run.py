"""``fedmq run ID``: one training run and its rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from coordinator.cli.output import connect, echo_json, shown, table, training_db_option
from fedmq_runtime.cli import NotFound

__all__ = ["run"]

_HEADER = (
    "ROUND", "STATE", "SITES", "RESULTS", "SITES' OWN VAL METRICS", "TEST RMSE", "WALL S",
    "REASON",
)  # fmt: skip
_EVAL_HEADER = ("MODEL", "MEASURED", "METRIC", "WEIGHTED", "COVERAGE")


@click.command()
@click.argument("run_id")
@training_db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def run(run_id: str, db: Path | str, as_json: bool) -> None:
    """Show one training run: its settings, a row per round, and the federated evaluation
    of each round's global model.

    The round table's metrics are what the sites measured on their own held-out split
    after training locally. The federated evaluation is the global model itself, scored
    by every site on its held-out split before it trains on it (the next round), or in the
    final evaluation round (`fedmq train --final-eval`): per site, and weighted by the
    sites' held-out samples with the coverage ("2 of 3" sites computed it). A metric a
    site cannot compute (e.g. AUC with one class only) is listed with its reason.

    \b
    Example:
        fedmq run run-20250101-120000-ab12 --db fedmq.db
        fedmq run run-20250101-120000-ab12 --json
    """
    reader = connect(db)
    detail = reader.run_detail(run_id)
    reader.close()
    if detail is None:
        raise NotFound(f"no run {run_id!r} in {shown(db)} (see `fedmq runs`)")
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
    evals = detail.get("evaluations") or []
    if evals:
        click.echo("")
        click.echo("federated evaluation of the global model (each site scores it on its "
                   "held-out split):")  # fmt: skip
        click.echo(_eval_table(evals))
        notes = _missing_notes(evals)
        if notes:
            click.echo("missing:")
            click.echo("\n".join(f"  {line}" for line in notes))


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _short(model_id: str) -> str:
    return model_id.rsplit("-", 1)[-1] if "-r" in model_id else model_id


def _eval_table(evals: list[dict[str, Any]]) -> str:
    sites = sorted({s for e in evals for s in e["sites"]})
    body = []
    for e in evals:
        when = "final eval" if e["final"] else f"round {e['round']}"
        for name, m in sorted(e["metrics"].items()):
            cells = []
            for site in sites:
                info = e["sites"].get(site)
                if info is None:
                    cells.append("")
                elif name in info["values"]:
                    cells.append(_num(info["values"][name]))
                else:
                    cells.append("missing")
            body.append(
                (_short(e["model_id"]), when, name, _num(m["value"]),
                 f"{m['sites']} of {m['of_sites']}", *cells)
            )  # fmt: skip
    return table(body, (*_EVAL_HEADER, *sites))


def _missing_notes(evals: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in evals:
        for site, info in sorted(e["sites"].items()):
            if info.get("error"):
                out.append(f"{_short(e['model_id'])} at {site}: {info['error']}")
                continue
            for name, why in sorted(info["missing"].items()):
                out.append(f"{_short(e['model_id'])} {name} at {site}: {why}")
    return out
