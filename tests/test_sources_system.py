"""System source: real psutil readings in sane ranges, with units, on a thread."""

from __future__ import annotations

import time

from schemas import Sample
from site_node.sources import SYSTEM_METRICS, SystemDeviceConfig, build_source
from site_node.sources.system import SystemSource, read_metric


def make(**kw: object) -> SystemSource:
    src = build_source(
        SystemDeviceConfig.model_validate({"name": "host", "source": "system", **kw})
    )
    assert isinstance(src, SystemSource)
    return src


def test_every_metric_reads_in_a_sane_range() -> None:
    src = make()
    samples = {s.name: s for s in src.poll()}
    assert set(samples) == set(SYSTEM_METRICS)
    assert {n: s.unit for n, s in samples.items()} == SYSTEM_METRICS
    good = {n: s.value for n, s in samples.items() if s.q == "good"}
    # These exist on any Linux host; disk I/O counters may be missing in containers.
    for name in (
        "cpu_percent",
        "mem_percent",
        "disk_percent",
        "load1",
        "process_count",
        "uptime_s",
    ):
        assert name in good, name
    for name in ("cpu_percent", "mem_percent", "swap_percent", "disk_percent"):
        if name in good:
            assert 0.0 <= good[name] <= 100.0, name
    assert good["mem_percent"] > 0
    assert good["process_count"] >= 2
    assert good["uptime_s"] > 0
    assert all(v >= 0 for v in good.values())
    assert len({s.ts for s in samples.values()}) == 1


def test_unreadable_disk_path_is_bad_quality_not_a_crash(tmp_path) -> None:
    src = make(disk_path=str(tmp_path / "gone"), metrics=["disk_percent", "mem_percent"])
    by_name = {s.name: s for s in src.poll()}
    assert (by_name["disk_percent"].q, by_name["disk_percent"].value) == ("bad", 0.0)
    assert by_name["mem_percent"].q == "good"
    assert read_metric("disk_percent", str(tmp_path / "gone")) is None
    assert read_metric("disk_percent", str(tmp_path)) is not None


def test_thread_polls_at_interval_and_stops() -> None:
    src = make(interval_s=0.1, metrics=["cpu_percent", "load1"])
    assert [(s.name, s.unit) for s in src.sensors()] == [("cpu_percent", "%"), ("load1", "")]
    got: list[Sample] = []
    src.start(got.append)
    deadline = time.monotonic() + 10
    while src.stats()["polls"] < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    src.stop()
    assert src.join(15) and not src.running
    polls = src.stats()["polls"]
    assert polls >= 3
    assert len(got) == 2 * polls
    assert [s.name for s in got[:4]] == ["cpu_percent", "load1", "cpu_percent", "load1"]
    assert got[2].ts >= got[0].ts
