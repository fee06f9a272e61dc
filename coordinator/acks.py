"""The highest contiguous committed ``seq`` per site: what the coordinator acks.

A site deletes outbox rows only when an ack covers them, and the broker may drop QoS 1
messages silently, so an ack must never jump over a hole: seqs above a hole wait in
``pending`` until the site re-sends the missing one. Ranges a site dropped by policy
(``gaps``) count as done.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["AckTracker"]


class AckTracker:
    """Per-site contiguous ack state; owned by the writer thread."""

    def __init__(self) -> None:
        self._acked: dict[str, int] = {}
        self._pending: dict[str, set[int]] = {}
        self._gaps: dict[str, dict[int, int]] = {}
        self._stored: set[str] = set()

    def load(
        self,
        site: str,
        acked: int,
        seqs_above: Iterable[int] = (),
        gaps: Iterable[tuple[int, int]] = (),
    ) -> None:
        """Restore a site's state from the database at startup."""
        self._acked[site] = acked
        self._pending[site] = set(seqs_above)
        self._gaps[site] = dict(gaps)
        if acked or self._pending[site]:
            self._stored.add(site)
        self._advance(site)

    def acked(self, site: str) -> int:
        return self._acked.get(site, 0)

    def committed(self, site: str, seqs: Iterable[int]) -> int:
        """Mark ``seqs`` committed (replays included); return the new contiguous ack."""
        base = self._acked.get(site, 0)
        pending = self._pending.setdefault(site, set())
        pending.update(s for s in seqs if s > base)
        self._stored.add(site)
        return self._advance(site)

    def gap(self, site: str, first: int, last: int) -> int:
        """Count an announced dropped range as done; return the new contiguous ack."""
        gaps = self._gaps.setdefault(site, {})
        gaps[first] = max(last, gaps.get(first, last))
        return self._advance(site)

    def heartbeat_base(self, site: str, last_acked: int) -> bool:
        """Start from the site's ``last_acked`` when nothing is stored for it.

        A coordinator whose database was replaced would otherwise wait forever for rows
        the site already deleted. Returns True when the base moved.
        """
        if site in self._stored or last_acked <= self._acked.get(site, 0):
            return False
        self._acked[site] = last_acked
        self._advance(site)
        return True

    def _advance(self, site: str) -> int:
        acked = self._acked.get(site, 0)
        pending = self._pending.setdefault(site, set())
        gaps = self._gaps.setdefault(site, {})
        while True:
            if acked + 1 in pending:
                pending.discard(acked + 1)
                acked += 1
                continue
            ends = [last for first, last in gaps.items() if first <= acked + 1 and last > acked]
            if ends:
                acked = max(ends)
                continue
            break
        for first in [f for f, last in gaps.items() if last <= acked]:
            del gaps[first]
        if pending and min(pending) <= acked:
            pending.difference_update({s for s in pending if s <= acked})
        self._acked[site] = acked
        return acked
