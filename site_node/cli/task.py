"""``fedmq-site task``: a training task's tools that run where its model code lives."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fedmq_runtime.cli import NotFound, UsageError
from site_node.training.tasks import TASKS, UnknownTaskError, get_task

__all__ = ["task"]


@click.group()
def task() -> None:
    """Tools of the training tasks this site ships (see `fedmq-site task evaluate`)."""


@task.command()
@click.option("--task", "task_name", required=True, help=f"Task name ({', '.join(TASKS)}).")
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Model weights (npz of named arrays), e.g. from `fedmq models export`.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def evaluate(task_name: str, weights: Path, as_json: bool) -> None:
    """Score a model file on the task's shipped public test set (cmapss-rul: the NASA
    C-MAPSS FD001 test set, last 30-cycle window of each of the 100 engines, RUL capped at
    125); prints the RMSE in cycles and the number of test engines.

    \b
    Example:
        fedmq models export run-20250101-120000-ab12-r5 --out model.npz
        fedmq-site task evaluate --task cmapss-rul --weights model.npz
        fedmq-site task evaluate --task cmapss-rul --weights model.npz --json
    """
    try:
        spec = get_task(task_name)
    except UnknownTaskError as exc:
        raise UsageError(str(exc.args[0])) from None
    if not spec.has_test_set:
        raise UsageError(f"task {task_name!r} ships no test set to evaluate on")
    try:
        raw = weights.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no weights file {weights}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {weights}: {exc.strerror or exc}") from None
    try:
        metrics = spec.score_test_set(raw)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot evaluate {weights} as a {task_name} model: {exc}") from None
    if as_json:
        click.echo(json.dumps({"task": task_name, "rmse": metrics["rmse"], "n": int(metrics["n"])}))
    else:
        click.echo(
            f"{task_name}: test RMSE {metrics['rmse']:.3f} cycles on {int(metrics['n'])} engines"
        )
