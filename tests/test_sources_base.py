"""Shared source helpers: backoff growth and jitter, rate-limited logging."""

from __future__ import annotations

import logging

from site_node.sources import Backoff, RateLimitedLog


def test_backoff_doubles_to_the_cap_with_jitter_and_resets() -> None:
    low = Backoff(0.5, 4.0, rng=lambda: 0.0)
    assert [low.next_delay() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    high = Backoff(0.5, 4.0, rng=lambda: 1.0)
    assert [high.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    high.reset()
    assert high.next_delay() == 0.5


def test_rate_limited_log_counts_what_it_suppressed(caplog) -> None:
    now = [0.0]
    logger = logging.getLogger("test.ratelog")
    ratelog = RateLimitedLog(logger, interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        assert ratelog(logging.WARNING, "bad", "bad line %d", 1)
        for i in range(2, 6):
            now[0] += 1.0
            assert not ratelog(logging.WARNING, "bad", "bad line %d", i)
        assert ratelog(logging.WARNING, "other", "other key")
        now[0] = 10.0
        assert ratelog(logging.WARNING, "bad", "bad line %d", 6)
    assert [r.getMessage() for r in caplog.records] == [
        "bad line 1",
        "other key",
        "bad line 6 (4 similar suppressed)",
    ]
