"""What each site produced against what the coordinator stored, read from the files.

Messages: a site allocates every seq ``1..last_seq`` of its epoch (its outbox says
``last_seq`` after the final drain); each must be in the coordinator's ``messages`` table
or inside a gap the site announced. Samples: a site's run ``r`` read rows ``0, 1, ...``
of its file in order (value ``r * RUN_STRIDE + row``), so walking the stored messages in
seq order, a row missing between two consecutive seqs was lost before it got a seq; it
must be matched by the samples the site announced as dropped (``samples_dropped``).
What a process held only in memory when it was killed (not yet in its outbox, never
acked) is not a loss by the contract, and cannot be told from the tail of a killed run:
that is why the final run of every site replays a finite file to its end.

Works on a database whose tables have an ``epoch`` column and on one without.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.cluster import RUN_STRIDE

__all__ = ["SiteFacts", "SiteTally", "integrity", "tally_site"]


@dataclass(frozen=True)
class SiteFacts:
    """What the harness knows about a site without the coordinator's database."""

    site: str
    last_seq: int
    final_run: int
    final_rows: int
    final_finished: bool
    samples_dropped: int  # announced in heartbeats (across restarts)
    outbox_gaps: tuple[tuple[int, int], ...] = ()  # still outstanding in the outbox


@dataclass
class SiteTally:
    site: str
    epochs: list[str]
    produced: int = 0  # messages (seqs) the site allocated
    stored: int = 0
    announced_gap: int = 0  # seqs inside announced gaps
    lost: int = 0  # seqs neither stored nor announced
    lost_seqs: list[tuple[int, int]] = field(default_factory=list)  # as ranges
    foreign: int = 0  # stored seqs beyond what the site allocated
    samples_stored: int = 0
    samples_distinct: int = 0
    samples_duplicated: int = 0
    samples_in_gaps: int = 0  # rows missing where whole messages were dropped (announced)
    samples_missing: int = 0  # rows missing between consecutive seqs, or at the final tail
    samples_dropped: int = 0  # announced by the site
    samples_lost: int = 0  # missing beyond what was announced
    final_rows: int = 0
    final_stored: int = 0
    runs_seen: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def integrity(path: Path) -> str:
    """SQLite's ``PRAGMA integrity_check`` of one database file ("ok" when sound)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        return "; ".join(str(r[0]) for r in rows[:5])
    finally:
        conn.close()


def tally_site(db: Path, facts: SiteFacts) -> SiteTally:
    """Compare one site's production with the coordinator database ``db``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return _tally(conn, facts)
    finally:
        conn.close()


def _tally(conn: sqlite3.Connection, f: SiteFacts) -> SiteTally:
    site = f.site
    has_epoch = "epoch" in _columns(conn, "messages")
    ep = "epoch" if has_epoch else "''"
    stored = {
        (str(e), int(s))
        for e, s in conn.execute(f"SELECT {ep}, seq FROM messages WHERE site = ?", (site,))
    }
    epochs = sorted({e for e, _ in stored}) or [""]
    t = SiteTally(site, epochs)
    # A site that never wiped its state dir has one epoch: its seqs are 1..last_seq.
    epoch = epochs[-1]
    produced = {(epoch, s) for s in range(1, f.last_seq + 1)}
    gap_ep = "epoch" if "epoch" in _columns(conn, "gaps") else "''"
    gaps: set[tuple[str, int]] = set()
    rows = conn.execute(f"SELECT {gap_ep}, first, last FROM gaps WHERE site = ?", (site,))
    for e, first, last in rows:
        gaps |= {(str(e) if has_epoch else "", s) for s in range(first, last + 1)}
    for first, last in f.outbox_gaps:
        gaps |= {(epoch, s) for s in range(first, last + 1)}
    t.produced = len(produced)
    t.stored = len(stored & produced)
    t.foreign = len(stored - produced)
    t.announced_gap = len((gaps & produced) - stored)
    lost = produced - stored - gaps
    t.lost = len(lost)
    t.lost_seqs = _ranges(s for _, s in lost)[:20]
    tel_ep = "epoch" if "epoch" in _columns(conn, "telemetry") else "''"
    total, distinct = conn.execute(
        "SELECT count(*), count(DISTINCT value) FROM telemetry WHERE site = ?", (site,)
    ).fetchone()
    t.samples_stored, t.samples_distinct = int(total), int(distinct)
    t.samples_duplicated = t.samples_stored - t.samples_distinct
    per_message = conn.execute(
        f"SELECT {tel_ep}, seq, min(value), max(value), count(DISTINCT value) FROM telemetry"
        " WHERE site = ? GROUP BY 1, 2 ORDER BY 1, 2",
        (site,),
    ).fetchall()
    _walk(t, per_message, {s for e, s in gaps if e == epoch}, f)
    t.samples_dropped = f.samples_dropped
    t.samples_lost = max(0, t.samples_missing - t.samples_dropped)
    return t


def _walk(t: SiteTally, per_message: list[Any], announced: set[int], f: SiteFacts) -> None:
    """Walk the stored messages in seq order and count rows missing between them."""
    prev_seq, prev_run, prev_row = 0, 0, -1
    runs: set[int] = set()
    for _epoch, seq, lo, hi, n in per_message:
        run, first, last = int(lo) // RUN_STRIDE, int(lo) % RUN_STRIDE, int(hi) % RUN_STRIDE
        runs.add(run)
        inside = (last - first + 1) - int(n)  # rows missing inside one batch
        # A new run starts at row 0; the tail of a killed run was never durable.
        missing = first - prev_row - 1 if run == prev_run else first
        missing = max(0, missing)
        between = range(prev_seq + 1, int(seq))
        if missing and between and all(s in announced for s in between):
            t.samples_in_gaps += missing
        else:
            t.samples_missing += missing
        t.samples_missing += max(0, inside)
        if run == f.final_run:
            t.final_stored += int(n)
        prev_seq, prev_run, prev_row = int(seq), run, last
    t.runs_seen = len(runs)
    t.final_rows = f.final_rows
    if f.final_finished and prev_run == f.final_run:
        t.samples_missing += max(0, f.final_rows - 1 - prev_row)  # the final run's tail
    elif f.final_finished:
        t.samples_missing += f.final_rows  # the final run stored nothing
