"""A full disk under a running site: it keeps running and says so, drops and counts what it
cannot store, and recovers by itself once space returns.

The data dir is a real, small tmpfs (the tests run as root, as CI does); a filler file
takes its free space, so the outbox's COMMIT fails with "database or disk is full".
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.acker import Acker
from tests.helpers.broker import Broker
from tests.helpers.mqtt import wait_for
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)

SITE = "site-a"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs for the site's data dir; unmounted at teardown."""
    mount = tmp_path / f"{SITE}-data"
    mount.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the test needs root): {out.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 16384
    with contextlib.suppress(OSError), path.open("wb") as fh:
        while True:
            fh.write(chunk)
            fh.flush()
            written += len(chunk)
    return written


def last(acker: Acker) -> dict:
    return acker.heartbeats[-1] if acker.heartbeats else {}


@pytest.mark.slow
def test_site_survives_a_full_disk_and_recovers_by_itself(
    own_broker: Broker,
    prefix: str,
    make_site,
    small_disk: Path,
    tmp_path: Path,
) -> None:
    acker = Acker(own_broker.port, prefix, tmp_path / "acker.db", ack=False).start()
    log_file = tmp_path / "site-file.log"
    try:
        site: SiteProc = make_site(
            own_broker.port, prefix, rate_hz=50.0, log={"file": str(log_file)}
        )
        assert site.data_dir == small_disk
        wait_for(lambda: last(acker).get("seq", 0) >= 5, 30, "rows stored")
        assert last(acker).get("outbox_error") is None
        filler = small_disk / "filler"
        assert fill(filler) > 0

        def failing() -> bool:
            hb = last(acker)
            return bool(hb.get("outbox_error")) and hb.get("samples_dropped", 0) > 0

        wait_for(failing, 30, "a heartbeat saying the outbox cannot store")
        hb = last(acker)
        assert hb["outbox_error"].startswith("disk full"), hb["outbox_error"]
        frozen_seq, dropped = hb["seq"], hb["samples_dropped"]
        # The site keeps running: heartbeats keep coming and the loss keeps being counted.
        beats = len(acker.heartbeats)
        wait_for(lambda: len(acker.heartbeats) >= beats + 3, 20, "heartbeats while full")
        wait_for(lambda: last(acker)["samples_dropped"] > dropped, 20, "drops counted")
        assert site.alive()
        pid = site.pid

        filler.unlink()  # space returns; no restart

        def recovered() -> bool:
            hb = last(acker)
            return hb.get("outbox_error") is None and hb.get("seq", 0) > frozen_seq + 5

        wait_for(recovered, 30, "the outbox storing again")
        acker.ack_enabled = True
        wait_for(lambda: last(acker).get("last_acked", 0) > frozen_seq, 30, "new seqs acked")
        assert site.alive() and site.pid == pid
        # The failure and the recovery are in the daemon's own log file, not only stderr.
        text = log_file.read_text()
        assert "outbox cannot store (disk full" in text
        assert "outbox storage recovered" in text
        assert "Traceback" not in site.log_text()
    finally:
        acker.stop()
