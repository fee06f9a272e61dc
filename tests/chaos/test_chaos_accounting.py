"""The chaos accounting finds every kind of loss and duplicate in a coordinator database.

Databases are built by hand in both layouts (tables without and with ``epoch``), so each
test states exactly which seq or sample is missing and what the tally must say.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.chaos.accounting import SiteFacts, integrity, tally_site
from tests.chaos.cluster import RUN_STRIDE

SITE = "site-0"
EPOCH = "e1"


def _db(path: Path, with_epoch: bool) -> sqlite3.Connection:
    ep = "epoch TEXT NOT NULL DEFAULT ''," if with_epoch else ""
    conn = sqlite3.connect(path)
    conn.executescript(
        f"""
        CREATE TABLE messages (site TEXT, {ep} seq INTEGER, kind TEXT);
        CREATE TABLE telemetry (site TEXT, {ep} seq INTEGER, name TEXT, value REAL);
        CREATE TABLE gaps (site TEXT, {ep} first INTEGER, last INTEGER);
        """
    )
    return conn


def _store(conn: sqlite3.Connection, with_epoch: bool, seq: int, values: list[int]) -> None:
    ep = (EPOCH,) if with_epoch else ()
    marks = "?, " * (len(ep) + 1)
    conn.execute(f"INSERT INTO messages VALUES (?, {marks}'telemetry')", (SITE, *ep, seq))
    conn.executemany(
        f"INSERT INTO telemetry VALUES (?, {marks}'n', ?)",
        [(SITE, *ep, seq, float(v)) for v in values],
    )


def _rows(run: int, first: int, last: int) -> list[int]:
    return [run * RUN_STRIDE + i for i in range(first, last + 1)]


def _stream(conn: sqlite3.Connection, with_epoch: bool, skip: tuple[int, ...] = ()) -> None:
    """Run 1 (killed): rows 0..299 in seqs 1-3; run 2 (final, 200 rows): seqs 4-5."""
    batches = [_rows(1, 0, 99), _rows(1, 100, 199), _rows(1, 200, 299)]
    batches += [_rows(2, 0, 99), _rows(2, 100, 199)]
    for seq, values in enumerate(batches, 1):
        if seq not in skip:
            _store(conn, with_epoch, seq, values)


def _facts(**kw: object) -> SiteFacts:
    base: dict[str, object] = dict(
        site=SITE, last_seq=5, final_run=2, final_rows=200, final_finished=True,
        samples_dropped=0,
    )  # fmt: skip
    base.update(kw)
    return SiteFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("with_epoch", [False, True], ids=["no-epoch", "epoch"])
def test_a_complete_stream_has_nothing_lost_or_duplicated(tmp_path: Path, with_epoch: bool) -> None:
    db = tmp_path / "c.db"
    conn = _db(db, with_epoch)
    _stream(conn, with_epoch)
    conn.commit()
    t = tally_site(db, _facts())
    assert (t.produced, t.stored, t.lost, t.samples_duplicated, t.samples_lost) == (5, 5, 0, 0, 0)
    assert t.epochs == [EPOCH if with_epoch else ""]
    assert (t.final_stored, t.final_rows, t.runs_seen) == (200, 200, 2)
    assert integrity(db) == "ok"


@pytest.mark.parametrize("with_epoch", [False, True], ids=["no-epoch", "epoch"])
def test_a_missing_seq_is_lost_unless_announced_as_a_gap(tmp_path: Path, with_epoch: bool) -> None:
    db = tmp_path / "c.db"
    conn = _db(db, with_epoch)
    _stream(conn, with_epoch, skip=(2,))
    conn.commit()
    t = tally_site(db, _facts())
    assert t.lost == 1 and t.lost_seqs == [(2, 2)]
    assert t.samples_lost == 100
    ep = (EPOCH,) if with_epoch else ()
    conn.execute(f"INSERT INTO gaps VALUES (?, {'?, ' * len(ep)}2, 2)", (SITE, *ep))
    conn.commit()
    t = tally_site(db, _facts())
    assert (t.lost, t.announced_gap, t.samples_in_gaps, t.samples_lost) == (0, 1, 100, 0)


def test_a_seq_beyond_the_sites_last_is_foreign_and_a_missing_tail_seq_lost(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    conn = _db(db, False)
    _stream(conn, False)
    conn.commit()
    assert tally_site(db, _facts(last_seq=4)).foreign == 1
    t = tally_site(db, _facts(last_seq=6))
    assert t.lost_seqs == [(6, 6)]


def test_a_sample_stored_twice_is_a_duplicate(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    conn = _db(db, False)
    _stream(conn, False)
    conn.execute("INSERT INTO telemetry VALUES (?, 2, 'n', ?)", (SITE, float(RUN_STRIDE + 150)))
    conn.commit()
    t = tally_site(db, _facts())
    assert t.samples_duplicated == 1 and t.samples_lost == 0


def test_rows_missing_between_consecutive_seqs_are_lost_unless_announced_dropped(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    conn = _db(db, False)
    _store(conn, False, 1, _rows(1, 0, 99))
    _store(conn, False, 2, _rows(1, 130, 199))  # rows 100..129 never got a seq
    _store(conn, False, 3, _rows(2, 0, 199))
    conn.commit()
    facts = _facts(last_seq=3)
    assert tally_site(db, facts).samples_lost == 30
    assert tally_site(db, _facts(last_seq=3, samples_dropped=30)).samples_lost == 0


def test_the_final_runs_tail_must_be_stored_but_a_killed_runs_tail_need_not(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    conn = _db(db, False)
    _store(conn, False, 1, _rows(1, 0, 99))  # run 1 killed at some row > 99: fine
    _store(conn, False, 2, _rows(2, 0, 149))  # the final run read 200 rows
    conn.commit()
    t = tally_site(db, _facts(last_seq=2))
    assert (t.samples_missing, t.samples_lost, t.final_stored) == (50, 50, 150)
