"""The demo's results: the per-round RMSE table, a PNG learning curve, a summary file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["RoundRow", "plot_learning_curve", "rmse_table", "write_summary"]


@dataclass(frozen=True)
class RoundRow:
    """One federated round as the demo reports it (RMSE in cycles; None when missing).

    ``val_rmse``: the round's global model scored by the sites on their held-out engines
    (federated evaluation, weighted by samples), not the sites' scores of their own
    locally trained models. ``test_rmse``: the FD001 test set, scored by the site's code.
    """

    round: int
    state: str
    n_results: int
    val_rmse: float | None
    test_rmse: float | None
    wall_s: float | None
    model_id: str | None = None


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rmse_table(rows: Sequence[RoundRow]) -> list[tuple[str, ...]]:
    """Rows for a text table: round, state, sites, federated val RMSE, FD001 test RMSE, s."""
    return [
        (str(r.round), r.state, str(r.n_results), _num(r.val_rmse), _num(r.test_rmse),
         _num(r.wall_s, 1))
        for r in rows
    ]  # fmt: skip


RMSE_HEADER = ("ROUND", "STATE", "SITES", "FED VAL RMSE (global)", "TEST RMSE (FD001)", "WALL S")


def plot_learning_curve(rows: Sequence[RoundRow], path: Path, title: str) -> Path:
    """A PNG of both RMSE curves of the global model per round (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server or in CI
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        for attr, label, marker in (
            ("val_rmse", "federated evaluation: global model on the sites' held-out engines", "o"),
            ("test_rmse", "FD001 test set (100 engines, scored by the site's model code)", "s"),
        ):
            points = [(r.round, getattr(r, attr)) for r in rows if getattr(r, attr) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker=marker, label=label)
        ax.set_xlabel("round")
        ax.set_ylabel("RMSE (cycles, RUL capped at 125)")
        ax.set_title(title)
        ax.set_xticks(sorted({r.round for r in rows}) if len(rows) <= 20 else ax.get_xticks())
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def write_summary(
    out_dir: Path, rows: Sequence[RoundRow], info: Mapping[str, Any]
) -> tuple[Path, Path]:
    """``summary.json`` (everything) and ``summary.md`` (for people); returns both paths."""
    doc = {**info, "rounds": [asdict(r) for r in rows]}
    json_path = out_dir / "summary.json"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lines = [
        "# fedmq demo",
        "",
        f"- task: `{info.get('task')}`, {info.get('sites')} sites, "
        f"{info.get('engines')} FD001 training engines split across them",
        f"- run: `{info.get('run_id')}`, final model: `{info.get('model_id')}`",
        f"- wall time: {_num(info.get('wall_s'), 1)} s "
        f"(sites live after {_num(info.get('startup_s'), 1)} s)",
        "",
        "| " + " | ".join(RMSE_HEADER) + " |",
        "|" + "---|" * len(RMSE_HEADER),
        *("| " + " | ".join(cells) + " |" for cells in rmse_table(rows)),
        "",
        "Inspect the database (the demo left it in place):",
        "",
        *(f"    {cmd}" for cmd in info.get("inspect", ())),
        "",
        "Data: NASA C-MAPSS FD001 (public domain; Saxena, Goebel, Simon, Eklund, PHM08, 2008).",
        "",
    ]
    md_path = out_dir / "summary.md"
    md_path.write_text("\n".join(lines))
    return json_path, md_path
