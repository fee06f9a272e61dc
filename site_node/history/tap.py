"""Where each device's readings go: the local history, and by its publish mode the wire.

``raw``: history and the batcher (every sample is published, as before). ``summary``:
history and the :class:`~site_node.history.summary.Summarizer`, whose window readings go
to the batcher. ``none``: history only; nothing of the device reaches the broker. Whatever the mode,
every reading is also shown to the row watchers (a deployed model's scoring windows),
which must only copy it and return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from schemas import Sample
from site_node.history.store import History
from site_node.history.summary import Summarizer

__all__ = ["Tap"]

AddRow = Callable[[str, Sequence[Sample]], None]
RowWatcher = Callable[[str, Sequence[Sample]], None]


class Tap:
    """Builds the per-device row emitters the daemon gives its sources."""

    def __init__(self, batcher_add_row: AddRow, history: History | None) -> None:
        self._batch = batcher_add_row
        self.history = history
        self.summaries = Summarizer(self._batch)
        # Mutated in place (emitters hold this very list); empty costs one loop per row.
        self._watchers: list[RowWatcher] = []

    def watch(self, watcher: RowWatcher) -> None:
        """Show every device's readings to ``watcher(device, row)`` from now on (on the
        source's thread: it must be quick and must not raise)."""
        self._watchers.append(watcher)

    def row_emitter(
        self, device: str, publish: str = "raw", window_s: float = 60.0
    ) -> Callable[[Sequence[Sample]], None]:
        """The callback receiving ``device``'s readings (each a sequence of samples)."""
        emit = self._route(device, publish, window_s)
        watchers = self._watchers

        def watched(row: Sequence[Sample]) -> None:
            emit(row)
            for watcher in watchers:
                watcher(device, row)

        return watched

    def _route(
        self, device: str, publish: str, window_s: float
    ) -> Callable[[Sequence[Sample]], None]:
        record = self.history.add_row if self.history is not None else None
        batch = self._batch
        if publish == "raw":
            if record is None:
                return lambda row: batch(device, row)

            def raw(row: Sequence[Sample]) -> None:
                record(device, row)
                batch(device, row)

            return raw
        if publish == "summary":
            fold = self.summaries.add_row

            def summary(row: Sequence[Sample]) -> None:
                if record is not None:
                    record(device, row)
                fold(device, row, window_s)

            return summary
        if publish == "none":
            if record is None:
                raise ValueError(f"device {device}: publish = 'none' needs the history enabled")
            return lambda row: record(device, row)
        raise ValueError(f"device {device}: unknown publish mode {publish!r}")

    def emitter(
        self, device: str, publish: str = "raw", window_s: float = 60.0
    ) -> Callable[[Sample], None]:
        """The callback receiving single samples (each a reading of its own)."""
        emit_row = self.row_emitter(device, publish, window_s)
        return lambda sample: emit_row((sample,))
