"""Liveness rules with an injected clock: online, stale, offline, late Wills ignored."""

from __future__ import annotations

import threading

from coordinator.ingest.liveness import LivenessChecker, SiteLiveness, evaluate
from coordinator.store import SiteRecord


def test_evaluate_states() -> None:
    assert evaluate("online", 1000, 1.0, 3, 3999)[0] == "online"
    state, reason = evaluate("online", 1000, 1.0, 3, 4001)
    assert state == "stale" and "no heartbeat for 3.0s" in reason
    assert evaluate("offline", 1000, 1.0, 3, 1000) == ("offline", "status offline")
    assert evaluate(None, 1000, 1.0, 3, 1000)[0] == "offline"


def test_transitions_are_recorded_once_each_with_a_reason() -> None:
    live = SiteLiveness(patience=3)
    rec = SiteRecord("a")
    ev = live.on_status(rec, "online", 1, at=0)
    assert [(e.state_from, e.state_to) for e in ev] == [(None, "online")]
    assert live.on_heartbeat(rec, 1, 1.0, at=1000) == []  # still online: no event
    assert live.refresh(rec, 3999) == []
    ev = live.refresh(rec, 4001)
    assert [(e.state_from, e.state_to) for e in ev] == [("online", "stale")]
    ev = live.on_heartbeat(rec, 1, 1.0, at=4500)
    assert [(e.state_from, e.state_to) for e in ev] == [("stale", "online")]
    ev = live.on_status(rec, "offline", 1, at=5000)
    assert [(e.state_to, e.reason) for e in ev] == [("offline", "status offline")]


def test_late_will_of_an_older_session_is_ignored() -> None:
    live = SiteLiveness(patience=3)
    rec = SiteRecord("a")
    live.on_status(rec, "online", 2, at=0)
    ev = live.on_status(rec, "offline", 1, at=10)
    assert rec.state == "online" and rec.session == 2
    assert [e.event for e in ev] == ["ignored_status"] and "session 1 < current 2" in ev[0].reason


def test_checker_ticks_with_the_injected_clock_and_stops() -> None:
    seen: list[int] = []
    done = threading.Event()

    def tick(now: int) -> None:
        seen.append(now)
        if len(seen) == 3:
            done.set()

    clock = iter(range(100, 10_000, 100))
    checker = LivenessChecker(tick, interval_s=0.01, clock=lambda: next(clock))
    checker.start()
    assert done.wait(5)
    checker.stop()
    assert seen[:3] == [100, 200, 300]
    n = len(seen)
    threading.Event().wait(0.05)
    assert len(seen) == n  # stopped means stopped
