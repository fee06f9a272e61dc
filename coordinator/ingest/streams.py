"""Which stream of a site is current: epochs, restarts and site-id conflicts.

Every envelope carries the sender's ``epoch``, a random id created with the site's state
directory. The durable key is ``(site, epoch, seq)``, so a site whose data directory was
wiped (a re-imaged plant PC, a restored backup, a new disk) starts a new stream at seq 1
and nothing of it is mistaken for a replay of the old one. Per site this module keeps the
*current* epoch (the newest one seen) and every epoch seen before:

* a message of an unseen epoch starts a new stream: event ``stream_restarted``;
* live traffic (not a replay) of an older, known epoch means two processes use the same
  site id (a copy-pasted config): event ``conflict`` (at most one a minute per site), and
  the site is shown as in conflict while it lasts. Both streams are stored, each under
  its own epoch and acked on its own; neither is mistaken for the other;
* an offline status (a Last Will) of an older epoch is the old stream's farewell and is
  ignored.
"""

from __future__ import annotations

import logging
from enum import Enum

from coordinator.store import EventRow, SiteRecord, StreamRow

__all__ = ["CONFLICT_EVENT_INTERVAL_MS", "Role", "Streams"]

log = logging.getLogger(__name__)

CONFLICT_EVENT_INTERVAL_MS = 60_000


class Role(Enum):
    """What a message's epoch is to its site."""

    CURRENT = "current"
    NEW = "new"  # just became current: session counting starts afresh
    OLDER = "older"  # an earlier stream of the site


class _Stream:
    __slots__ = ("acked", "first_seen", "last_seen")

    def __init__(self, first_seen: int, last_seen: int, acked: int) -> None:
        self.first_seen, self.last_seen, self.acked = first_seen, last_seen, acked


class Streams:
    """Per-site epochs; owned by the writer thread like the site records.

    On the hot path (a message of the site's current stream) :meth:`observe` costs two
    dict lookups and a comparison; rows are built only when saved.
    """

    def __init__(self) -> None:
        self._known: dict[str, dict[str, _Stream]] = {}
        self._dirty: set[tuple[str, str]] = set()

    def load(self, rows: list[StreamRow]) -> None:
        for row in rows:
            self._known.setdefault(row.site, {})[row.epoch] = _Stream(
                row.first_seen, row.last_seen, row.acked
            )

    def all(self) -> list[StreamRow]:
        return [
            StreamRow(site, epoch, s.first_seen, s.last_seen, s.acked)
            for site, by_epoch in self._known.items()
            for epoch, s in by_epoch.items()
        ]

    def observe(
        self,
        rec: SiteRecord,
        epoch: str,
        at: int,
        live: bool,
        events: list[EventRow],
        quiet_ms: float = 30_000,
    ) -> Role:
        """Account for one message of ``rec.site`` from stream ``epoch``.

        ``live`` is False for replays (``historical``) and offline statuses, which an old
        stream may still legitimately send. An older stream whose live traffic goes on
        after the current one fell silent for ``quiet_ms`` becomes current again (the
        newer process went away). Appends the events to store to ``events``.
        """
        known = self._known.get(rec.site)
        if known is None:
            known = self._known[rec.site] = {}
        stream = known.get(epoch)
        fresh = stream is None
        if stream is None:
            stream = known[epoch] = _Stream(at, at, 0)
        elif at > stream.last_seen:
            stream.last_seen = at
        self._dirty.add((rec.site, epoch))
        if epoch == rec.epoch:
            return Role.CURRENT
        if fresh and len(known) == 1:
            rec.epoch = epoch  # the first stream of a site never seen before
            return Role.CURRENT
        if fresh:
            why = (
                f"site stream restarted: state lost or site re-imaged (epoch "
                f"{rec.epoch or '-'} -> {epoch or '-'}); both streams are kept"
            )
            return self._switch(rec, epoch, at, "stream_restarted", why, events)
        if not live:
            return Role.OLDER
        current = known.get(rec.epoch)
        if current is None or at - current.last_seen > quiet_ms:
            why = (
                f"stream {epoch or '-'} is live again and stream {rec.epoch or '-'} has been "
                "silent: it is current again"
            )
            return self._switch(rec, epoch, at, "stream_resumed", why, events)
        self._conflict(rec, epoch, at, events)
        return Role.OLDER

    def acked(self, site: str, epoch: str, acked: int) -> None:
        """Record the contiguous ack of a stream (saved with the next commit)."""
        stream = self._known.get(site, {}).get(epoch)
        if stream is None:
            stream = self._known.setdefault(site, {})[epoch] = _Stream(0, 0, acked)
        elif stream.acked == acked:
            return
        stream.acked = acked
        self._dirty.add((site, epoch))

    def take_dirty(self) -> list[StreamRow]:
        """The streams changed since the last call, as rows to save."""
        rows = []
        for site, epoch in self._dirty:
            s = self._known[site][epoch]
            rows.append(StreamRow(site, epoch, s.first_seen, s.last_seen, s.acked))
        self._dirty = set()
        return rows

    @staticmethod
    def _switch(
        rec: SiteRecord, epoch: str, at: int, event: str, why: str, events: list[EventRow]
    ) -> Role:
        log.warning("site %s: %s", rec.site, why)
        events.append(EventRow(rec.site, at, event, None, None, why))
        rec.epoch = epoch
        rec.session = -1  # the stream counts its own sessions
        return Role.NEW

    def _conflict(self, rec: SiteRecord, epoch: str, at: int, events: list[EventRow]) -> None:
        quiet = not rec.conflict_at or at - rec.conflict_at >= CONFLICT_EVENT_INTERVAL_MS
        rec.conflict_at = at
        rec.conflict_reason = (
            f"two live processes use site id {rec.site!r}: streams {epoch or '-'} and "
            f"{rec.epoch or '-'} interleave (a copied config or data directory?)"
        )
        if quiet:
            log.warning("site %s: %s", rec.site, rec.conflict_reason)
            events.append(EventRow(rec.site, at, "conflict", None, None, rec.conflict_reason))
