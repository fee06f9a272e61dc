"""A site's stream identity: the epoch is created with the outbox, survives restarts, and a
wiped data dir starts a new stream (new epoch, seq from 1) that old acks cannot touch."""

from __future__ import annotations

import json
import queue
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import Ack, Sample, TelemetryBatch, Topics, encode
from site_node.outbox import Outbox, read_stats
from site_node.settings import OutboxSettings
from tests.helpers.acker import Acker
from tests.helpers.broker import Broker
from tests.helpers.mqtt import TestClient, wait_for
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)

SITE = "site-a"
HEX16 = re.compile(r"^[0-9a-f]{16}$")


class Quiet:
    """A publisher that is never connected: rows stay in the outbox."""

    connected = False

    def has_room(self) -> bool:
        return False

    def wait_room(self, timeout: float) -> bool:
        time.sleep(min(timeout, 0.01))
        return False

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        return False


def telemetry(seq: int) -> bytes:
    sample = Sample(ts=1, name="x", value=1.0)
    return encode(TelemetryBatch(site="s", session=1, seq=seq, device="d", samples=(sample,)))


@pytest.fixture
def open_box(tmp_path: Path) -> Iterator:
    boxes: list[Outbox] = []

    def make(path: Path | None = None) -> Outbox:
        box = Outbox(path or tmp_path / "outbox.db", OutboxSettings(), Quiet())  # type: ignore[arg-type]
        box.start()
        boxes.append(box)
        return box

    yield make
    for b in boxes:
        b.stop(flush_s=0)


def fill(box: Outbox, n: int) -> list[int]:
    return [box.append("telemetry", "t", telemetry).result(10) for _ in range(n)]


def test_new_outbox_gets_a_random_epoch_kept_across_restarts(open_box, tmp_path) -> None:
    box = open_box()
    epoch = box.epoch
    assert HEX16.match(epoch)
    assert fill(box, 3) == [1, 2, 3]
    box.stop(flush_s=0)
    again = open_box()
    assert again.epoch == epoch  # a restart continues the stream
    assert fill(again, 1) == [4]
    assert read_stats(tmp_path / "outbox.db").epoch == epoch
    other = open_box(tmp_path / "wiped" / "outbox.db")  # a new data dir: a new stream
    assert HEX16.match(other.epoch) and other.epoch != epoch
    assert fill(other, 1) == [1]


def test_outbox_from_before_epochs_keeps_the_empty_epoch(open_box, tmp_path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, created_ms INTEGER NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "CREATE TABLE gaps (first INTEGER PRIMARY KEY, last INTEGER NOT NULL);"
        "INSERT INTO meta VALUES ('next_seq', 13), ('last_acked', 12), ('dropped', 0);"
    )
    db.commit()
    db.close()
    box = open_box(path)
    assert box.epoch == ""  # its stream just continues
    assert fill(box, 1) == [13]


def test_an_ack_of_another_epoch_never_deletes_rows(open_box, tmp_path) -> None:
    box = open_box()
    fill(box, 5)
    box.ack(5, "0123456789abcdef")  # the old stream's ack, same seqs
    box.ack(5, "")  # a coordinator that does not know epochs
    # Acks are applied in order: had either of those been applied, 2 would be stale.
    box.ack(2, box.epoch)
    wait_for(lambda: box.stats().last_acked == 2, 10, "own ack applied")
    assert box.stats().depth == 3
    assert [
        s for (s,) in sqlite3.connect(tmp_path / "outbox.db").execute("SELECT seq FROM outbox")
    ] == [3, 4, 5]


class Watcher:
    """Every message under the site's topics, decoded, with the time it arrived."""

    def __init__(self, port: int, prefix: str) -> None:
        self.topics = Topics(prefix)
        self.client = TestClient(port).connect()
        self.client.subscribe(f"{prefix}/site/{SITE}/#")
        self.seen: list[tuple[str, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                m = self.client.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if m.payload:
                self.seen.append((m.topic, json.loads(m.payload)))

    def kinds(self, epoch: str) -> set[str]:
        return {body.get("kind", "") for _t, body in list(self.seen) if body.get("epoch") == epoch}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.client.disconnect()
        self.client.client.loop_stop()


@pytest.mark.slow
def test_wiped_site_starts_a_new_stream_that_is_stored_and_acked(
    own_broker: Broker, prefix: str, make_site, tmp_path: Path
) -> None:
    acker = Acker(own_broker.port, prefix, tmp_path / "acker.db").start()
    watcher = Watcher(own_broker.port, prefix)
    try:
        site: SiteProc = make_site(own_broker.port, prefix, rate_hz=50.0)
        wait_for(lambda: len(acker.stored(SITE)) >= 12, 30, "first stream stored")
        first = acker.stored(SITE)[0].epoch
        assert HEX16.match(first), first
        assert site.status()["epoch"] == first
        wait_for(lambda: read_stats(site.data_dir / "outbox.db").last_acked >= 12, 20, "acked")
        site.kill()
        old = [r.seq for r in acker.stored(SITE, first)]
        shutil.rmtree(site.data_dir)  # a re-imaged plant PC
        site.start()
        wait_for(lambda: site.data_dir.joinpath("outbox.db").exists(), 20, "new outbox")
        wait_for(lambda: (site.status()["epoch"] or first) != first, 20, "new epoch")
        second = site.status()["epoch"]
        assert HEX16.match(second)

        def new_rows() -> list[int]:
            return [r.seq for r in acker.stored(SITE, second)]

        wait_for(lambda: len(new_rows()) >= 12, 30, "second stream stored")
        # The new stream starts again at seq 1 and none of its rows was taken for a
        # duplicate of the old stream's same seqs: all are stored, under their own epoch.
        rows = new_rows()
        assert rows[:12] == list(range(1, 13))
        assert [r.seq for r in acker.stored(SITE, first)] == old
        wait_for(lambda: read_stats(site.data_dir / "outbox.db").last_acked >= 12, 20, "acked")
        # Every kind of envelope carries the stream's epoch, the Last Will of the killed
        # process included.
        wait_for(lambda: {"heartbeat", "site_status", "registration"} <= watcher.kinds(second), 20)
        assert {"telemetry", "heartbeat", "site_status", "registration"} <= watcher.kinds(first)
        wills = [
            b
            for t, b in list(watcher.seen)
            if t.endswith("/status") and b.get("reason") == "connection lost"
        ]
        assert wills and all(b["epoch"] == first for b in wills)
        assert "telemetry" in watcher.kinds(second)
        assert {b.get("epoch") for _t, b in list(watcher.seen)} == {first, second}
    finally:
        watcher.stop()
        acker.stop()


@pytest.mark.slow
def test_an_old_epoch_ack_on_the_wire_leaves_a_running_site_rows(
    own_broker: Broker, prefix: str, make_site, tmp_path: Path
) -> None:
    site: SiteProc = make_site(own_broker.port, prefix, rate_hz=50.0)
    wait_for(lambda: read_stats(site.data_dir / "outbox.db").depth >= 10, 30, "rows stored")
    epoch = site.status()["epoch"]
    client = TestClient(own_broker.port).connect()
    try:
        stale = Ack(site=SITE, epoch="feedfacefeedface", session=1, acked=1_000_000)
        client.publish(Topics(prefix).ack(SITE), encode(stale))
        # Acks are applied in arrival order: had the stale one been applied, this one
        # (lower) would change nothing and last_acked would not be 5.
        own = Ack(site=SITE, epoch=epoch, session=1, acked=5)
        client.publish(Topics(prefix).ack(SITE), encode(own))
        wait_for(lambda: read_stats(site.data_dir / "outbox.db").last_acked == 5, 10, "own ack")
        assert read_stats(site.data_dir / "outbox.db").depth >= 5
    finally:
        client.client.disconnect()
        client.client.loop_stop()
