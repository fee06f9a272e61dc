"""The contiguous ack: never past a hole, gaps count as done, heartbeat base."""

from __future__ import annotations

from coordinator.ingest.acks import AckTracker


def test_ack_stops_at_a_hole_until_it_is_filled() -> None:
    t = AckTracker()
    assert t.committed("a", [1, 2, 4, 5]) == 2
    assert t.committed("a", [4]) == 2  # replay of a pending one changes nothing
    assert t.committed("a", [3]) == 5
    assert t.committed("a", [1, 2]) == 5  # replays below the ack


def test_gaps_announced_by_the_site_count_as_done() -> None:
    t = AckTracker()
    t.committed("a", [1, 2, 9, 10])
    assert t.gap("a", 3, 8) == 10
    assert t.gap("b", 1, 4) == 4  # a gap at the very start
    assert t.committed("b", [5]) == 5


def test_restored_state_continues_where_it_was() -> None:
    t = AckTracker()
    t.load("a", 10, seqs_above=[12, 13], gaps=[(11, 11)])
    assert t.acked("a") == 13


def test_heartbeat_sets_the_base_only_when_nothing_is_stored() -> None:
    t = AckTracker()
    assert t.heartbeat_base("fresh", 500) is True  # DB replaced: do not wait for 1..500
    assert t.committed("fresh", [501]) == 501
    t.committed("known", [1, 2])
    assert t.heartbeat_base("known", 50) is False
    assert t.acked("known") == 2
    # Seqs already waiting above the reported base become contiguous from it.
    t2 = AckTracker()
    t2.committed("x", [8, 9])
    assert t2.acked("x") == 0
    t3 = AckTracker()
    t3.heartbeat_base("y", 7)
    assert t3.committed("y", [8, 9]) == 9
