"""The site's local telemetry history, the per-device publish modes, and datasets from it.

- :mod:`~site_node.history.store`: ``History``, the SQLite file of the site's own samples
  (``<data_dir>/history.db``), written in batches by one thread, bounded by age and size.
- :mod:`~site_node.history.summary`: ``publish = "summary"`` window aggregates.
- :mod:`~site_node.history.tap`: routes each device's readings by its ``publish`` mode.
- :mod:`~site_node.history.export`: a ``history = {...}`` training dataset as a CSV.
"""

from site_node.history.config import HISTORY_FILE, HistorySelection, HistorySettings
from site_node.history.export import ExportResult, dataset_source, export_history
from site_node.history.store import History
from site_node.history.summary import Summarizer, published_sensors
from site_node.history.tap import Tap

__all__ = [
    "HISTORY_FILE",
    "ExportResult",
    "History",
    "HistorySelection",
    "HistorySettings",
    "Summarizer",
    "Tap",
    "dataset_source",
    "export_history",
    "published_sensors",
]
