"""Which sites a round selects, read from the store as ``schemas.Registration`` models:
live sites offering the task, their approval mode, and the rows they registered; a stored
registration that does not validate (an older or forged schema) is never selected."""

from __future__ import annotations

import json
from pathlib import Path

from coordinator.store import SiteRecord, SqliteStore
from coordinator.store.read import open_fedmq_db
from coordinator.training.select import offers, registered_rows
from fedmq_runtime.clock import now_ms
from schemas import DatasetSummary, Registration, TaskOffer, encode

HASH = "ab" * 32


def _reg(site: str, **kw: object) -> str:
    return encode(Registration(site=site, session=1, seq=0, **kw)).decode()  # type: ignore[arg-type]


def _online(site: str, registration: str | None) -> SiteRecord:
    return SiteRecord(site, registration=registration, status="online", session=1,
                      last_alive=now_ms(), interval_s=60.0)  # fmt: skip


def test_offers_and_rows_come_from_valid_registrations_only(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    rul = (TaskOffer(name="rul", code_hash=HASH),)
    datasets = (
        DatasetSummary(name="fd001", rows=700, description="rul private rows"),
        DatasetSummary(name="other", rows=9000, description="vibration private rows"),
    )
    # A registration that was valid JSON but fails the model now: a non-hex code hash and
    # a negative row count (a raw-dict reader would select it and trust its rows).
    bad = json.loads(_reg("d", tasks=rul))
    bad["tasks"][0]["code_hash"] = "not-a-hash"
    bad["datasets"] = [{"name": "x", "rows": -5, "description": "rul private rows"}]
    store = SqliteStore(db)
    store.save_sites([
        _online("a", _reg("a", tasks=rul, datasets=datasets, approval_mode="manual")),
        _online("b", _reg("b", tasks=(TaskOffer(name="other", code_hash=HASH),))),
        _online("c", None),  # online, never registered
        _online("d", json.dumps(bad)),
        SiteRecord("e", registration=_reg("e", tasks=rul), status="offline"),
        _online("f", _reg("f", tasks=rul, datasets=datasets[1:])),
    ])  # fmt: skip
    store.commit()
    store.close()

    conn = open_fedmq_db(db)
    try:
        found = offers(conn, "rul")
        assert [(o.site, o.code_hash, o.approval_mode) for o in found] == [
            ("a", HASH, "manual"),
            ("f", HASH, "auto"),
        ]
        assert [o.site for o in offers(conn, "rul", only=["f", "d"])] == ["f"]
        assert registered_rows(conn, "a", "rul") == 700  # the dataset named for the task
        assert registered_rows(conn, "f", "rul") == 9000  # else the largest
        assert registered_rows(conn, "b", "rul") is None  # no datasets
        assert registered_rows(conn, "c", "rul") is None  # no registration
        assert registered_rows(conn, "d", "rul") is None  # does not validate
        assert registered_rows(conn, "zz", "rul") is None  # no such site
    finally:
        conn.close()
