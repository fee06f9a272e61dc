"""``python -m tests.chaos --quick`` in the default suite: kill -9 of each kind, nothing lost.

Two sites stream a counter file through a real Mosquitto into ``fedmq serve``; two kills of
each kind (site, coordinator and its writer child, broker, mixed), then a clean final
replay. The long version is documented in docs/reliability.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.scenario import Options, quick, run


@pytest.mark.slow
def test_quick_chaos_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    report = run(quick(Options(workdir=tmp_path / "chaos", max_minutes=3.0)))
    text = report.to_text()
    totals = report.totals()
    assert report.kills() == 8, text
    assert totals["produced"] > 0 and totals["final_stored"] == totals["final_rows"], text
    assert totals["lost"] == 0 and totals["samples_lost"] == 0, text
    assert totals["samples_duplicated"] == 0 and totals["foreign"] == 0, text
    assert set(report.integrity.values()) == {"ok"}, text
    assert all(f.recover_s is not None for f in report.faults), text
    assert report.coordinator_exit == 0, text
