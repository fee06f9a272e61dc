"""Acknowledge an alarm: ``fedmq alarms ack ID [--by NAME]``.

Records who acknowledged the alarm and when on its row of ``alarms``, and a site event
``alarm_acked``. The acknowledgement stays while the alarm stays active or is cleared; it
is reset when the alarm becomes active again (the ingest's upsert does that).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from coordinator.store import connect
from fedmq_runtime.clock import now_ms

__all__ = ["AlarmUnknown", "ack_alarm"]


class AlarmUnknown(LookupError):
    """No alarm with this id in the database."""


def ack_alarm(db: Path | str, alarm: int, by: str, at: int | None = None) -> dict[str, Any]:
    """Record that ``by`` acknowledged alarm ``alarm`` (its ``id``); return its row.

    Raises:
        AlarmUnknown: no such alarm (nothing is changed).
    """
    at = now_ms() if at is None else at
    conn = connect(db)
    conn.row_factory = sqlite3.Row
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT * FROM alarms WHERE id = ?", (alarm,)).fetchone()
            except sqlite3.OperationalError:  # no alarms table yet
                row = None
            if row is None:
                raise AlarmUnknown(str(alarm))
            conn.execute(
                "UPDATE alarms SET acked_by = ?, acked_at = ? WHERE id = ?", (by, at, alarm)
            )
            why = f"{row['device']}/{row['alarm_id']} ({row['state']}) acknowledged by {by}"
            conn.execute(
                "INSERT INTO site_events (site, at, event, state_from, state_to, reason) "
                "VALUES (?, ?, 'alarm_acked', ?, ?, ?)",
                (row["site"], at, row["state"], row["state"], why),
            )
            out = dict(row) | {"acked_by": by, "acked_at": at}
        return out
    finally:
        conn.close()
