"""``fedmq-site task``: a training task's tools that run where its model code lives.

``new`` writes a starter task and a sample CSV, ``check`` trains one local epoch on the
site's own data (no datasite, no broker), ``evaluate`` scores a model on a task's shipped
test set. ``fedmq-site tasks`` lists them all (docs/tasks.md).
"""

from __future__ import annotations

import json
import random
import time
import traceback
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import click

from fedmq_runtime.cli import NotFound, UsageError
from site_node.training.tasks import TASKS, UnknownTaskError, get_task

__all__ = ["task"]

_NAME_HELP = "Task name, e.g. press-fail (letters, digits, - and _)."


@click.group()
def task() -> None:
    """Write, try and score training tasks (`fedmq-site tasks` lists them).

    \b
    Example:
        fedmq-site task new press-fail --out tasks
        fedmq-site task check press-fail --config site.toml
        fedmq-site task evaluate --task cmapss-rul --weights model.npz
    """


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


# -- task new -----------------------------------------------------------------------------


def sample_rows(machines: int = 6, hours: int = 288, seed: int = 0) -> list[str]:
    """Hourly readings of ``machines`` machines with failures; ``fail_soon`` = a failure
    within the next 24 h. Readings drift in the day before a failure (what the starter
    task learns). Deterministic for a seed."""
    rng = random.Random(seed)
    lines = ["time,machine,volt,rotate,pressure,vibration,fail_soon"]
    start = 1_767_225_600  # 2026-01-01T00:00:00Z
    for m in range(1, machines + 1):
        # A failure every 50-90 h, and one near the end (so validation holds positives).
        fails, t = [], rng.randint(30, 70)
        while t < hours - 40:
            fails.append(t)
            t += rng.randint(50, 90)
        fails.append(hours - rng.randint(6, 18))
        for h in range(hours):
            ahead = min((f - h for f in fails if f >= h), default=10_000)
            drift = max(0.0, 1.0 - ahead / 24.0)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + 3600 * h))
            volt = 170 + rng.gauss(0, 8) + 6 * drift
            rotate = 450 + rng.gauss(0, 30) - 40 * drift
            pressure = 100 + rng.gauss(0, 5) + 8 * drift
            vibration = 40 + rng.gauss(0, 3) + 12 * drift
            label = int(0 <= ahead <= 24)
            lines.append(
                f"{stamp},m{m},{volt:.2f},{rotate:.2f},{pressure:.2f},{vibration:.2f},{label}"
            )
    return lines


@task.command()
@click.argument("name")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write to (the site's tasks_dir); created if missing.",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def new(name: str, out: Path, force: bool) -> None:
    """Write a working starter task to --out: NAME.py (- written as _), a small torch
    model on a CSV (failure within a day, from four readings), and NAME-sample.csv, six
    machines' hourly readings to try it on. It passes `fedmq-site task check` as
    written; then map its columns to your CSV (docs/tasks.md, "Your own CSV").

    \b
    Example:
        fedmq-site task new press-fail --out tasks
        fedmq-site tasks --tasks-dir tasks
    """
    from site_node.training.tasks.registry import NAME_PATTERN

    if not NAME_PATTERN.match(name):
        raise UsageError(f"task name {name!r} must match [A-Za-z0-9_-]{{1,128}}")
    if name in TASKS:
        raise UsageError(f"{name!r} is a built-in task; choose another name")
    module = out / f"{name.replace('-', '_')}.py"
    sample = out / f"{name}-sample.csv"
    existing = [str(p) for p in (module, sample) if p.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} exists; pass --force to overwrite")
    template = resources.files("site_node.cli").joinpath("starter_task.py.template")
    out.mkdir(parents=True, exist_ok=True)
    module.write_text(template.read_text().replace("__NAME__", name))
    sample.write_text("\n".join(sample_rows()) + "\n")
    code_hash = get_task(name, out).code_hash
    click.echo(f"wrote {module} (task {name}, hash {code_hash})")
    click.echo(f"wrote {sample} (6 machines x 288 hours; fail_soon = a failure within 24 h)")
    click.echo(
        "\nnext: add to the site's TOML, then try it with "
        f"`fedmq-site task check {name} --config site.toml`:\n\n"
        "[training]\n"
        f'tasks_dir = "{out}"\n'
        f'allow = ["{name}@{code_hash}"]\n\n'
        "[[training.datasets]]\n"
        f'name = "{name}-data"\n'
        f'task = "{name}"\n'
        f'paths = ["{sample}"]'
    )


# -- task check ---------------------------------------------------------------------------


def _step(what: str, name: str, fn: Callable[[], Any]) -> Any:
    """Run one contract call; a failure is an error naming the call and the task's line."""
    try:
        return fn()
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        raise click.ClickException(
            f"task {name}: {what} failed: {type(exc).__name__}: {exc}{where}"
        ) from None


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@task.command()
@click.argument("name")
@click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FEDMQ_CONFIG",
    help="Site TOML: its tasks_dir and the [[training.datasets]] entry of the task.",
)
@click.option(
    "--tasks-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of task files (default: [training] tasks_dir of --config).",
)
@click.option(
    "--data",
    "data_paths",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Data file(s) instead of the configured dataset's paths (repeatable).",
)
@click.option("--params", help="Dataset params as JSON (default: the configured ones).")
@click.option(
    "--epochs", type=click.IntRange(min=1), default=1, show_default=True, help="Local epochs."
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Score these weights (npz, e.g. from `fedmq models export`) instead of training.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def check(
    name: str,
    config: Path | None,
    tasks_dir: Path | None,
    data_paths: tuple[Path, ...],
    params: str | None,
    epochs: int,
    weights: Path | None,
    as_json: bool,
) -> None:
    """Try task NAME on this site's own data before allowing it: check that it provides
    the task contract, read the site's dataset for it, train --epochs local epochs from
    fresh weights (or take --weights, e.g. a federated model), score the model on the
    validation split and predict for the latest rows. Runs here (imports torch); no
    datasite, no broker. Exit 0 when every step ran.

    \b
    Example:
        fedmq-site task check press-fail --config site.toml
        fedmq-site task check press-fail --tasks-dir tasks --data tasks/press-fail-sample.csv
        fedmq-site task check press-fail --config site.toml --weights press-fail.npz
    """
    from site_node.cli.tasks import training_table
    from site_node.training.tasks import contract_problems

    table = training_table(config)
    if tasks_dir is None and table.get("tasks_dir"):
        tasks_dir = Path(str(table["tasks_dir"]))
    try:
        spec = get_task(name, tasks_dir)
    except UnknownTaskError as exc:
        raise NotFound(str(exc)) from None
    problems = _step("loading", name, lambda: contract_problems(spec))
    if problems:
        raise UsageError(f"task {name} does not provide the task contract: {'; '.join(problems)}")
    paths, load_params = _dataset(name, config, table, data_paths, params)
    t0 = time.perf_counter()
    rows = _step("read_table", name, lambda: spec.read_table([str(p) for p in paths], load_params))
    data = _step("load_dataset", name, lambda: spec.load_dataset(rows, load_params))
    if weights is None:
        model, n, train_metrics = _step(
            "train", name, lambda: spec.train(None, data, {"epochs": epochs})
        )
    else:
        try:
            model, n, train_metrics, epochs = weights.read_bytes(), 0, {}, 0
        except OSError as exc:
            raise NotFound(f"cannot read weights {weights}: {exc.strerror or exc}") from None
    train_s = time.perf_counter() - t0
    scores = _step("evaluate", name, lambda: spec.evaluate(model, data))
    missing = sorted(set(spec.metrics) - set(scores))
    if missing:
        raise click.ClickException(f"task {name}: evaluate left out metric(s) {missing}")
    window = [
        {k: float(v) for k, v in r.items() if isinstance(v, int | float)}
        for r in rows.tail(spec.window).to_dict("records")
    ]
    try:
        outputs: dict[str, Any] = spec.predict(model, window, load_params)
        predicted = f"{', '.join(f'{k}={_fmt(v)}' for k, v in outputs.items())}"
    except ValueError as exc:  # the window of table rows may lack what live samples carry
        outputs, predicted = {}, f"not on table rows: {exc}"
    result = {
        "task": name,
        "version": spec.version,
        "source": spec.source,
        "code_hash": spec.code_hash,
        "paths": [str(p) for p in paths],
        "rows": len(rows),
        "n_samples": n,
        "epochs": epochs,
        "weights": str(weights) if weights else None,
        "train_s": round(train_s, 3),
        "train_metrics": train_metrics,
        "metrics": scores,
        "outputs": outputs,
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"task {name} {spec.version} ({spec.source}) hash {spec.code_hash}")
    click.echo(f"data: {len(rows)} rows from {', '.join(str(p) for p in paths)}")
    if weights is None:
        click.echo(f"trained {epochs} epoch(s) on {n} samples in {train_s:.1f} s")
    click.echo(f"metrics of {weights or 'the trained model'} on the validation split:")
    for key, value in scores.items():
        better = {"min": "lower is better", "max": "higher is better"}.get(
            spec.metrics.get(key, ""), ""
        )
        click.echo(f"  {key:<12} {_fmt(value):<12} {better}")
    click.echo(f"predict on the latest {spec.window} row(s): {predicted}")
    click.echo(f'to allow it: allow = ["{name}@{spec.code_hash}"]')


def _history_export(config: Path | None, entry: dict[str, Any]) -> list[Path]:
    """A history dataset: the site's history exported as its jobs get it (one CSV)."""
    from site_node.history import HistorySelection, dataset_source
    from site_node.settings import load_site_settings

    try:
        data_dir = load_site_settings(config).data_dir
        selection = HistorySelection.model_validate(entry["history"])
        files, _ = dataset_source(str(entry.get("name")), [], selection, {}, data_dir)
    except Exception as exc:  # settings, selection or the history file: one line
        raise UsageError(f"cannot export the history dataset: {exc}") from None
    return [Path(p) for p in files]


def _dataset(
    name: str,
    config: Path | None,
    table: dict[str, Any],
    data_paths: tuple[Path, ...],
    params: str | None,
) -> tuple[list[Path], dict[str, Any]]:
    """The files and params to try the task on: --data/--params, else the site's dataset."""
    entry = next((d for d in table.get("datasets") or [] if d.get("task") == name), None)
    try:
        load_params = json.loads(params) if params else dict((entry or {}).get("params") or {})
    except json.JSONDecodeError as exc:
        raise UsageError(f"--params is not JSON: {exc}") from None
    if data_paths:
        paths = list(data_paths)
    elif entry is not None and entry.get("history"):
        paths = _history_export(config, entry)
    elif entry is not None:
        paths = [Path(p) for p in entry.get("paths") or []]
    else:
        where = f"in {config}" if config else "(no --config)"
        raise UsageError(
            f"no [[training.datasets]] entry for task {name} {where}; add one "
            f'(task = "{name}", paths = [...]) or pass --data FILE'
        )
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise NotFound(f"data file(s) not found: {', '.join(absent)}")
    return paths, load_params
