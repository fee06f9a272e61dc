"""Serial-port source: one reading per line, CSV or JSON, reopened when the device vanishes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import serial

from schemas import now_ms
from site_node.sources.base import Backoff, ThreadedSource
from site_node.sources.config import SerialDeviceConfig
from site_node.sources.parsing import CsvLineParser, JsonLineParser, MalformedLine

__all__ = ["SerialSource"]

log = logging.getLogger(__name__)


class _Idle(Exception):
    """No byte arrived for ``idle_reopen_s``: reopen in case the adapter hung."""


class SerialSource(ThreadedSource):
    """Reads lines from a serial port and emits one sample per configured sensor.

    Stats: ``samples``, ``lines``, ``malformed``, ``bad_values`` (q=bad samples), ``opens``,
    ``reopens`` (opens after the first), ``disconnects``, ``open_failures``, ``emit_errors``.
    """

    def __init__(
        self,
        cfg: SerialDeviceConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        counters = ("lines", "malformed", "bad_values", "opens", "reopens", "disconnects")
        super().__init__(cfg.name, cfg.sensors(), (*counters, "open_failures"), clock)
        self.cfg = cfg
        self._parser: CsvLineParser | JsonLineParser
        if cfg.format == "csv":
            self._parser = CsvLineParser(
                cfg.columns, cfg.delimiter, cfg.exclude, cfg.timestamp_column, cfg.timestamp_unit
            )
        else:
            self._parser = JsonLineParser(
                cfg.units, cfg.exclude, cfg.timestamp_column, cfg.timestamp_unit
            )
        self._port: serial.Serial | None = None
        self._port_lock = threading.Lock()

    def stop(self) -> None:
        """Stop reading; a blocked read is cancelled so this returns promptly."""
        self._stopping.set()
        # Under the lock: the reader closes the port under it too, so the abort pipe that
        # cancel_read writes to cannot be closed (and its fd number reused) meanwhile.
        with self._port_lock:
            if self._port is not None:
                try:
                    self._port.cancel_read()
                except Exception:  # a vanished device; the read timeout still bounds it
                    log.debug("cancel_read failed", exc_info=True)
        super().stop()

    def handle_line(self, raw: bytes) -> None:
        """Parse one received line (without its newline) and emit its samples."""
        try:
            text = raw.decode(self.cfg.encoding).strip()
        except UnicodeDecodeError:
            self._malformed("undecodable bytes", raw[:80])
            return
        if not text:
            return
        self._count("lines")
        try:
            samples = self._parser.parse(text, now_ms())
        except MalformedLine as exc:
            self._malformed(str(exc), raw[:80])
            return
        self._emit_row(samples)

    def _open(self) -> serial.Serial | None:
        cfg = self.cfg
        try:
            port = serial.Serial(
                port=cfg.port,
                baudrate=cfg.baud,
                bytesize=cfg.bytesize,
                parity=cfg.parity,
                stopbits=cfg.stopbits,
                timeout=cfg.timeout_s,
                exclusive=cfg.exclusive,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            self._count("open_failures")
            self._ratelog(
                logging.WARNING,
                "open",
                "device %s: cannot open %s: %s",
                self.device,
                cfg.port,
                exc,
            )
            return None
        with self._port_lock:
            self._port = port
        return port

    def _close(self, port: serial.Serial) -> None:
        with self._port_lock:
            self._port = None
            try:
                port.close()
            except Exception:  # closing a vanished device may fail; nothing left to do with it
                log.debug("close failed", exc_info=True)

    def _run(self) -> None:
        backoff = Backoff(self.cfg.reopen_min_s, self.cfg.reopen_max_s)
        opened_before = False
        while not self._stopping.is_set():
            port = self._open()
            if port is not None:
                self._count("opens")
                if opened_before:
                    self._count("reopens")
                    log.info("device %s: reopened %s", self.device, self.cfg.port)
                else:
                    log.info("device %s: opened %s", self.device, self.cfg.port)
                opened_before = True
                try:
                    self._read(port, backoff)
                except _Idle:
                    self._count("disconnects")
                    log.warning(
                        "device %s: no data for %.1f s, reopening",
                        self.device,
                        self.cfg.idle_reopen_s,
                    )
                except (serial.SerialException, OSError, TypeError) as exc:
                    # pyserial raises TypeError when the fd is closed under a pending read.
                    if self._stopping.is_set():
                        break
                    self._count("disconnects")
                    self._ratelog(
                        logging.WARNING,
                        "lost",
                        "device %s: lost %s (%s), reopening with backoff",
                        self.device,
                        self.cfg.port,
                        exc,
                    )
                finally:
                    self._close(port)
            if self._stopping.wait(backoff.next_delay()):
                break

    def _read(self, port: serial.Serial, backoff: Backoff) -> None:
        buf = bytearray()
        discarding = False  # inside an overlong line: drop bytes until its newline
        last_data = self._clock()
        limit = self.cfg.max_line_bytes
        while not self._stopping.is_set():
            chunk = port.read(max(1, min(port.in_waiting, 65536)))
            if not chunk:
                idle = self.cfg.idle_reopen_s
                if idle is not None and self._clock() - last_data > idle:
                    raise _Idle
                continue
            last_data = self._clock()
            buf += chunk
            while True:
                end = buf.find(b"\n")
                if end < 0:
                    break
                line = bytes(buf[:end])
                del buf[: end + 1]
                if discarding:
                    discarding = False
                    continue
                if len(line) > limit:
                    self._malformed(f"line longer than {limit} bytes", line[:80])
                    continue
                self.handle_line(line)
                # Only a device that delivers lines is healthy enough to forget its backoff.
                backoff.reset()
            if len(buf) > limit:
                if not discarding:
                    self._malformed(f"line longer than {limit} bytes", bytes(buf[:80]))
                discarding = True
                buf.clear()
