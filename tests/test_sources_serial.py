"""Serial source end to end through real pseudo-terminals (no mocks of pyserial)."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas import Sample
from site_node.sources import SerialDeviceConfig, build_source
from site_node.sources.serial_port import SerialSource
from tests.helpers.wait import wait_for


class PtyDevice:
    """A pty pair behind a symlink, so a test can unplug it and plug in a fresh one."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        target = os.ttyname(slave)
        # The source opens the slave by path; this process needs only the master side.
        os.close(slave)
        tmp = self.link.with_suffix(".new")
        os.symlink(target, tmp)
        os.replace(tmp, self.link)
        self.master = master

    def unplug(self) -> None:
        """Close the master (the device hangs up) and remove the path (it vanished)."""
        assert self.master is not None
        os.close(self.master)
        self.master = None
        self.link.unlink()

    def write(self, data: bytes) -> None:
        assert self.master is not None
        os.write(self.master, data)

    def close(self) -> None:
        if self.master is not None:
            os.close(self.master)
            self.master = None


def take(q: queue.Queue[Sample], n: int, timeout: float = 30.0) -> list[Sample]:
    return [q.get(timeout=timeout) for _ in range(n)]


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyDevice]:
    dev = PtyDevice(tmp_path / "ttyFAKE0")
    yield dev
    dev.close()


def serial_cfg(port: Path, **kw: object) -> SerialDeviceConfig:
    base: dict[str, object] = {
        "name": "press-1",
        "source": "serial",
        "port": str(port),
        "baud": 115200,
        "timeout_s": 0.1,
        "reopen_min_s": 0.05,
        "reopen_max_s": 0.2,
        "columns": [{"name": "temp", "unit": "C"}, {"name": "vib", "unit": "mm/s"}],
    }
    base.update(kw)
    return SerialDeviceConfig.model_validate(base)


@pytest.fixture
def started(pty: PtyDevice) -> Iterator[Callable[..., tuple[SerialSource, queue.Queue[Sample]]]]:
    sources: list[SerialSource] = []

    def start(**kw: object) -> tuple[SerialSource, queue.Queue[Sample]]:
        src = build_source(serial_cfg(pty.link, **kw))
        assert isinstance(src, SerialSource)
        got: queue.Queue[Sample] = queue.Queue()
        src.start(got.put)
        sources.append(src)
        wait_for(lambda: src.stats()["opens"] >= 1)
        return src, got

    yield start
    for src in sources:
        src.stop()


def test_csv_lines_parsed_with_units_and_garbage_skipped(pty: PtyDevice, started) -> None:
    src, got = started()
    before = time.time() * 1000
    pty.write(b"21.5,3.2\r\nthis is garbage\n22.0,nan\n1,2,3\n\xff\xfe\n23.5,4.0\n")
    samples = take(got, 6)
    assert [(s.name, s.value, s.unit, s.q) for s in samples] == [
        ("temp", 21.5, "C", "good"),
        ("vib", 3.2, "mm/s", "good"),
        ("temp", 22.0, "C", "good"),
        ("vib", 0.0, "mm/s", "bad"),
        ("temp", 23.5, "C", "good"),
        ("vib", 4.0, "mm/s", "good"),
    ]
    assert all(before - 1000 <= s.ts <= time.time() * 1000 + 1000 for s in samples)
    wait_for(lambda: src.stats()["malformed"] == 3)
    stats = src.stats()
    assert stats["samples"] == 6
    assert stats["bad_values"] == 1
    assert stats["lines"] == 5  # the undecodable line never became text


def test_partial_writes_are_joined_into_one_line(pty: PtyDevice, started) -> None:
    _src, got = started()
    pty.write(b"21")
    time.sleep(0.25)  # longer than the read timeout: the half line must wait in the buffer
    pty.write(b".5,3.")
    pty.write(b"25\n")
    assert [s.value for s in take(got, 2)] == [21.5, 3.25]


def test_overlong_line_dropped_whole(pty: PtyDevice, started) -> None:
    src, got = started(max_line_bytes=64)
    pty.write(b"9" * 500)
    pty.write(b"9" * 500 + b",1\n5.0,6.0\n")
    assert [s.value for s in take(got, 2)] == [5.0, 6.0]
    assert src.stats()["malformed"] == 1
    assert got.empty()


def test_json_lines(pty: PtyDevice, started) -> None:
    src, got = started(format="json", columns=[], units={"temp": "C", "rpm": "rpm"})
    pty.write(
        b'{"temp": 21.5, "rpm": 1480}\n'
        b'{"name": "temp", "value": 22.5, "unit": "C", "q": "uncertain", "ts": 1700000000000}\n'
        b"{not json\n"
        b'{"temp": "hot"}\n'
        b'{"temp": null, "rpm": 1500}\n'
    )
    samples = take(got, 5)
    assert [(s.name, s.value, s.unit, s.q) for s in samples] == [
        ("temp", 21.5, "C", "good"),
        ("rpm", 1480.0, "rpm", "good"),
        ("temp", 22.5, "C", "uncertain"),
        ("temp", 0.0, "C", "bad"),
        ("rpm", 1500.0, "rpm", "good"),
    ]
    assert samples[2].ts == 1700000000000
    wait_for(lambda: src.stats()["malformed"] == 2)


def test_device_timestamp_column(pty: PtyDevice, started) -> None:
    _src, got = started(
        columns=[{"name": "ts"}, {"name": "temp", "unit": "C"}],
        timestamp_column="ts",
        timestamp_unit="s",
    )
    pty.write(b"1700000000.25,20.0\n")
    (sample,) = take(got, 1)
    assert (sample.name, sample.ts, sample.value) == ("temp", 1700000000250, 20.0)


def test_port_vanishes_and_reading_resumes_on_a_new_pty(pty: PtyDevice, started) -> None:
    src, got = started()
    pty.write(b"1.0,2.0\n")
    assert [s.value for s in take(got, 2)] == [1.0, 2.0]

    pty.unplug()
    wait_for(lambda: src.stats()["disconnects"] == 1)
    # While the path is gone the source keeps trying, with backoff, and stays alive.
    failures = src.stats()["open_failures"]
    wait_for(lambda: src.stats()["open_failures"] >= failures + 2)
    assert src.running

    pty.plug()
    wait_for(lambda: src.stats()["reopens"] == 1)
    pty.write(b"3.0,4.0\n")
    assert [s.value for s in take(got, 2)] == [3.0, 4.0]
    stats = src.stats()
    assert stats["opens"] == 2
    assert stats["samples"] == 4


def test_hangup_without_path_change_reopens_same_path(pty: PtyDevice, started) -> None:
    src, got = started()
    assert pty.master is not None
    os.close(pty.master)  # hang up, then plug a new pair in before the backoff ends
    pty.master = None
    pty.plug()
    wait_for(lambda: src.stats()["reopens"] >= 1)
    pty.write(b"7.0,8.0\n")
    assert [s.value for s in take(got, 2)] == [7.0, 8.0]


def test_missing_port_backs_off(tmp_path: Path) -> None:
    src = SerialSource(serial_cfg(tmp_path / "absent", reopen_min_s=0.1, reopen_max_s=0.4))
    t0 = time.monotonic()
    src.start(lambda s: None)
    try:
        wait_for(lambda: src.stats()["open_failures"] >= 5, 30)
        # Backoff waits at least 0.05, 0.1, 0.2 and 0.2 s before tries 2..5 (half of a
        # ceiling doubling from 0.1 s up to 0.4 s); a hot loop gets there in milliseconds.
        # A lower bound only (with a little slack): load makes it later, never earlier.
        assert time.monotonic() - t0 >= 0.5
        assert src.running
    finally:
        src.stop()


def test_stop_interrupts_the_backoff_wait(tmp_path: Path) -> None:
    src = SerialSource(serial_cfg(tmp_path / "absent", reopen_min_s=60, reopen_max_s=60))
    src.start(lambda s: None)
    wait_for(lambda: src.stats()["open_failures"] == 1, 30)  # now waiting 30-60 s
    src.stop()
    # Ended well before the backoff would have: stop() does not wait the backoff out.
    assert src.join(15)


def test_stop_interrupts_a_blocked_read(pty: PtyDevice) -> None:
    # A read timeout far above the deadline below (past the config's 1 s bound, hence
    # model_copy), so only a cancelled read ends in time, however loaded the machine.
    src = SerialSource(serial_cfg(pty.link).model_copy(update={"timeout_s": 60.0}))
    src.start(lambda s: None)
    try:
        wait_for(lambda: src.stats()["opens"] >= 1, 30)
        time.sleep(0.2)  # let the reader block in read(); the assert does not depend on it
    finally:
        src.stop()
    assert src.join(15)
    assert not src.running


def test_failing_emit_is_counted_and_reader_survives(pty: PtyDevice) -> None:
    src = build_source(serial_cfg(pty.link))
    seen: list[Sample] = []

    def emit(sample: Sample) -> None:
        if sample.name == "temp":
            raise RuntimeError("sink full")
        seen.append(sample)

    src.start(emit)
    try:
        wait_for(lambda: src.stats()["opens"] == 1)
        pty.write(b"1,2\n3,4\n")
        wait_for(lambda: len(seen) == 2)
        assert [s.value for s in seen] == [2.0, 4.0]
        assert src.stats()["emit_errors"] == 2
    finally:
        src.stop()


def test_silent_device_is_reopened_when_idle_reopen_set(pty: PtyDevice, started) -> None:
    src, got = started(idle_reopen_s=0.3)
    wait_for(lambda: src.stats()["reopens"] >= 1)
    assert src.stats()["disconnects"] >= 1
    pty.write(b"5,6\n")
    assert [s.value for s in take(got, 2)] == [5.0, 6.0]
