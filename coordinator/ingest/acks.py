"""The highest contiguous committed ``seq`` per stream: what the coordinator acks.

A stream is one site's epoch (``(site, epoch)``): a wiped or re-imaged site starts a new
one at seq 1. A site deletes outbox rows only when an ack covers them, and the broker may
drop QoS 1 messages silently, so an ack must never jump over a hole: seqs above a hole
wait in ``pending`` until the site re-sends the missing one. Ranges a site dropped by
policy (``gaps``) count as done, but only between the current ack and the seq of the
message that announced them (anything else would let one message jump the ack
arbitrarily far); they are kept merged and sorted, so advancing is O(log n) per step
whatever a site announces.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterable

__all__ = ["AckTracker", "clip_gap"]


def clip_gap(first: int, last: int, acked: int, seq: int) -> tuple[int, int] | None:
    """The part of an announced dropped range that may count: above the current ack and
    below the announcing message's own ``seq``; None when nothing is left."""
    first, last = max(first, acked + 1), min(last, seq - 1)
    return (first, last) if first <= last else None


class _Stream:
    __slots__ = ("acked", "gaps", "pending", "stored")

    def __init__(self, acked: int = 0) -> None:
        self.acked = acked
        self.pending: set[int] = set()
        self.gaps: list[tuple[int, int]] = []  # sorted, merged, all above ``acked``
        self.stored = False


class AckTracker:
    """Per-stream contiguous ack state; owned by the writer thread."""

    def __init__(self) -> None:
        self._streams: dict[Hashable, _Stream] = {}

    def _get(self, key: Hashable) -> _Stream:
        s = self._streams.get(key)
        if s is None:
            s = self._streams[key] = _Stream()
        return s

    def load(
        self,
        key: Hashable,
        acked: int,
        seqs_above: Iterable[int] = (),
        gaps: Iterable[tuple[int, int]] = (),
    ) -> None:
        """Restore a stream's state from the database at startup."""
        s = self._streams[key] = _Stream(acked)
        s.pending = set(seqs_above)
        for first, last in gaps:
            _merge(s.gaps, first, last)
        s.stored = bool(acked or s.pending)
        self._advance(s)

    def acked(self, key: Hashable) -> int:
        s = self._streams.get(key)
        return 0 if s is None else s.acked

    def committed(self, key: Hashable, seqs: Iterable[int]) -> int:
        """Mark ``seqs`` committed (replays included); return the new contiguous ack."""
        s = self._get(key)
        s.pending.update(q for q in seqs if q > s.acked)
        s.stored = True
        return self._advance(s)

    def gap(self, key: Hashable, first: int, last: int) -> int:
        """Count an announced dropped range as done; return the new contiguous ack.

        Callers clip the range with :func:`clip_gap` first.
        """
        s = self._get(key)
        if last > s.acked:
            _merge(s.gaps, max(first, s.acked + 1), last)
        return self._advance(s)

    def heartbeat_base(self, key: Hashable, last_acked: int) -> bool:
        """Start from the site's ``last_acked`` when nothing is stored for the stream.

        A coordinator whose database was replaced would otherwise wait forever for rows
        the site already deleted. Returns True when the base moved.
        """
        s = self._get(key)
        if s.stored or last_acked <= s.acked:
            return False
        s.acked = last_acked
        self._advance(s)
        return True

    @staticmethod
    def _advance(s: _Stream) -> int:
        acked, pending, gaps = s.acked, s.pending, s.gaps
        while True:
            if acked + 1 in pending:
                pending.discard(acked + 1)
                acked += 1
            elif gaps and gaps[0][0] <= acked + 1:
                acked = max(acked, gaps.pop(0)[1])
            else:
                break
        while gaps and gaps[0][1] <= acked:
            gaps.pop(0)
        if pending and min(pending) <= acked:
            pending.difference_update([q for q in pending if q <= acked])
        s.acked = acked
        return acked


def _merge(gaps: list[tuple[int, int]], first: int, last: int) -> None:
    """Insert [first, last] into a sorted list of disjoint ranges, merging neighbours."""
    if first > last:
        return
    i = bisect.bisect_left(gaps, (first, first))
    if i > 0 and gaps[i - 1][1] >= first - 1:
        i -= 1
    j = i
    while j < len(gaps) and gaps[j][0] <= last + 1:
        first, last = min(first, gaps[j][0]), max(last, gaps[j][1])
        j += 1
    gaps[i:j] = [(first, last)]
