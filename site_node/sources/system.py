"""Host metrics of the machine the site runs on (psutil), every ``interval_s``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psutil

from schemas import Sample, now_ms
from site_node.sources.base import ThreadedSource
from site_node.sources.config import SYSTEM_METRICS, SystemDeviceConfig

__all__ = ["SystemSource", "read_metric"]

log = logging.getLogger(__name__)


def _net(attr: str) -> float | None:
    counters = psutil.net_io_counters()
    return None if counters is None else float(getattr(counters, attr))


def _disk_io(attr: str) -> float | None:
    # None in many containers and VMs without block device statistics.
    counters = psutil.disk_io_counters()
    return None if counters is None else float(getattr(counters, attr))


def _readers(disk_path: str) -> dict[str, Callable[[], float | None]]:
    return {
        "cpu_percent": lambda: psutil.cpu_percent(interval=None),
        "mem_percent": lambda: psutil.virtual_memory().percent,
        "swap_percent": lambda: psutil.swap_memory().percent,
        "disk_percent": lambda: psutil.disk_usage(disk_path).percent,
        "load1": lambda: psutil.getloadavg()[0],
        "load5": lambda: psutil.getloadavg()[1],
        "load15": lambda: psutil.getloadavg()[2],
        "net_bytes_sent": lambda: _net("bytes_sent"),
        "net_bytes_recv": lambda: _net("bytes_recv"),
        "disk_read_bytes": lambda: _disk_io("read_bytes"),
        "disk_write_bytes": lambda: _disk_io("write_bytes"),
        "process_count": lambda: float(len(psutil.pids())),
        "uptime_s": lambda: time.time() - psutil.boot_time(),
    }


def read_metric(metric: str, disk_path: str = "/") -> float | None:
    """One metric's current value, or None when this host cannot report it."""
    try:
        value = _readers(disk_path)[metric]()
    except (OSError, AttributeError, psutil.Error):
        return None
    return None if value is None else float(value)


class SystemSource(ThreadedSource):
    """Samples the configured host metrics; a metric the host cannot read is sent q=bad.

    Stats: ``samples``, ``polls``, ``bad_values``, ``emit_errors``.
    """

    def __init__(self, cfg: SystemDeviceConfig) -> None:
        super().__init__(cfg.name, cfg.sensors(), ("polls", "bad_values"))
        self.cfg = cfg
        self._readers = _readers(cfg.disk_path)

    def poll(self) -> list[Sample]:
        """Read every configured metric once."""
        ts = now_ms()
        out = []
        for metric in self.cfg.metrics:
            try:
                value = self._readers[metric]()
            except (OSError, AttributeError, psutil.Error) as exc:
                self._ratelog(
                    logging.WARNING,
                    metric,
                    "device %s: cannot read %s: %s",
                    self.device,
                    metric,
                    exc,
                )
                value = None
            unit = SYSTEM_METRICS[metric]
            if value is None:
                out.append(Sample(ts=ts, name=metric, value=0.0, unit=unit, q="bad"))
            else:
                out.append(Sample(ts=ts, name=metric, value=float(value), unit=unit))
        return out

    def _run(self) -> None:
        # The first cpu_percent() call only sets the reference point; wait a little so the
        # first sample already has a meaningful figure.
        psutil.cpu_percent(interval=None)
        if self._stopping.wait(min(self.cfg.interval_s, 0.5)):
            return
        while True:
            samples = self.poll()
            self._count("polls")
            self._emit_row(samples)
            if self._stopping.wait(self.cfg.interval_s):
                return
