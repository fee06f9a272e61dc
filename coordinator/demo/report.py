"""The demo's results: the per-round RMSE table, a PNG learning curve, a summary file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["RoundRow", "plot_learning_curve", "plot_rul", "rmse_table", "write_summary"]


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


def plot_rul(
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, float, float]]]],
    path: Path,
    title: str,
    threshold: float | None = None,
) -> Path:
    """A PNG of predicted vs true RUL over each engine's replayed cycles, one panel per
    site; ``curves[site][engine]`` = [(cycle, true RUL, predicted RUL), ...]."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    sites = [s for s in curves if curves[s]] or list(curves)[:1]
    ncols = min(2, max(1, len(sites)))
    nrows = max(1, -(-len(sites) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 3.6 * nrows), dpi=110,
                             squeeze=False, sharey=True)  # fmt: skip
    try:
        for ax, site in zip(axes.flat, sites, strict=False):
            for k, (engine, pts) in enumerate(sorted(curves.get(site, {}).items())):
                if not pts:
                    continue
                color = f"C{k % 10}"
                cycles = [c for c, _t, _p in pts]
                ax.plot(cycles, [t for _c, t, _p in pts], "--", color=color, alpha=0.7)
                ax.plot(cycles, [p for _c, _t, p in pts], "o-", color=color, markersize=3,
                        label=f"{engine} (dashed: true)")  # fmt: skip
            if threshold is not None:
                ax.axhline(threshold, color="red", linestyle=":", linewidth=1)
            ax.set_title(site)
            ax.set_xlabel("engine cycle (FD001 test rows, replayed live)")
            ax.set_ylabel("RUL (cycles)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(sites) :]:
            ax.axis("off")
        fig.suptitle(title)
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
        *_live_md(info.get("live")),
        "Data: NASA C-MAPSS FD001 (public domain; Saxena, Goebel, Simon, Eklund, PHM08, 2008).",
        "",
    ]
    md_path = out_dir / "summary.md"
    md_path.write_text("\n".join(lines))
    return json_path, md_path


def _live_md(live: Any) -> list[str]:
    """The live scoring section of summary.md (none when the demo did not deploy)."""
    if not live:
        return []
    header = live.get("header", ())
    return [
        "## Live scoring with the final model",
        "",
        f"- deployed: `{live.get('model_id')}` to {', '.join(live.get('sites', []))}, "
        f"rule `{live.get('rule')}`, every {live.get('cadence_s')} s",
        f"- predictions stored: {live.get('predictions')}, RMSE against the true RUL "
        f"(capped at 125): {_num(live.get('rmse'))} cycles",
        f"- alarms: {live.get('alarms_active')} active of {live.get('alarms')}",
        f"- plot: `{live.get('plot')}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in live.get("table", [])),
        "",
    ]
