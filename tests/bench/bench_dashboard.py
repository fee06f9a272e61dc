"""Benchmark: the dashboard with 1,000 registered sites, and what an open tab costs ingest.

Run (from the repository root; needs /usr/bin/chromium; ~2-4 minutes)::

    .venv/bin/python tests/bench/bench_dashboard.py --publishers 4 --messages 4000 --repeat 2

1. A database with 1,000 synthetic registered sites (locations, hierarchy, tasks; half
   online) under a real ``fedmq serve`` (real Mosquitto):
   - ``GET /api/sites`` wall time (best and median of 15);
   - the fleet page in headless Chromium: time from navigation start to interactive (the
     page's own mark: markers drawn, table filled, basemap drawn), best/median/worst of 7.
2. Ingest, side by side: the same stream (telemetry batches of 10 samples, QoS 1, from
   publisher processes, while serve runs) into serve on such a database with no tab open,
   then with one fleet tab open (its SSE stream, the 30 s table refresh and the 60 s
   sparklines included), alternated ``--repeat`` times. Reports msg/s and the ratio
   tab/none (target >= 0.9), the CPU per message of serve (all threads and its writer
   process), and the hub's own poll CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "bench"))

from bench_coordinator import _cpu, _run_stream, _v5_client  # noqa: E402

from schemas import Ack  # noqa: E402
from tests.helpers.broker import Broker  # noqa: E402
from tests.helpers.coord_proc import Coordinator, wait_until  # noqa: E402
from tests.test_dashboard import synthetic_fleet  # noqa: E402
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_FLAGS, _api_url  # noqa: E402

N_SITES = 1000


def _serve(port: int, db: Path) -> Coordinator:
    prefix = f"bench-{uuid.uuid4().hex[:6]}/fedmq/v1"
    coord = Coordinator(db, port, prefix).start().wait_ready(60)
    wait_until(lambda: _api_url(db), 30, "dashboard URL")
    return coord


def _url(db: Path) -> str:
    return str(_api_url(db))


def page_and_api(browser: Any, port: int, work: Path) -> tuple[list[float], list[float]]:
    db = work / "fleet.db"
    synthetic_fleet(db, N_SITES, heartbeats=30)
    coord = _serve(port, db)
    try:
        url = _url(db)
        api = []
        for _ in range(15):
            t = time.perf_counter()
            with urllib.request.urlopen(url + "/api/sites", timeout=10) as r:
                body = r.read()
            api.append(time.perf_counter() - t)
        assert body.count(b'"site":') >= N_SITES
        page = browser.new_page(viewport={"width": 1400, "height": 950})
        ready = []
        for _ in range(7):
            page.goto(url + "/fleet")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            n = page.evaluate("Object.keys(window.fedmqFleet.markers).length")
            assert n == N_SITES, n
            ready.append(page.evaluate("window.fedmqFleet.readyAt") / 1000)
        page.close()
        return api, ready
    finally:
        coord.stop()


def ingest(browser: Any, port: int, work: Path, publishers: int, n: int, tab: bool) -> Any:
    """Seconds from the first to the last ack of the stream, serve's CPU, and the hub's
    (polls, poll CPU seconds) meanwhile."""
    db = work / f"ingest-{uuid.uuid4().hex[:6]}.db"
    synthetic_fleet(db, N_SITES)
    coord = _serve(port, db)
    prefix = coord.prefix
    acked: dict[str, int] = {}
    stamps: list[float] = []
    cpu: list[float] = []
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        ack = Ack.model_validate_json(msg.payload)
        stamps.append(time.perf_counter())
        if len(stamps) == 1:
            cpu.append(_cpu(coord.proc))
        acked[ack.site] = max(acked.get(ack.site, 0), ack.acked)
        if len(acked) == publishers and all(v >= n for v in acked.values()):
            cpu.append(_cpu(coord.proc))
            done.set()

    c = _v5_client(f"acks-{uuid.uuid4().hex[:6]}", port, on_message)
    c.subscribe(f"{prefix}/site/+/ack", 1)
    page = None
    try:
        if tab:
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.goto(_url(db) + "/fleet")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.wait_for_function("window.fedmq.received >= 1")  # the stream is open
        before = _hub(db)
        _run_stream(port, prefix, publishers, n, lambda: done.wait(600))
        after = _hub(db)
        hub = (after[0] - before[0], after[1] - before[1])
        if page is not None:  # the tab stayed live throughout
            assert page.evaluate("window.fedmq.stream.readyState") == 1
    finally:
        if page is not None:
            page.close()
        coord.stop()
        c.disconnect()
        c.loop_stop()
    if not done.is_set():
        raise SystemExit(f"serve did not ack everything: {acked}")
    return stamps[-1] - stamps[0], cpu[-1] - cpu[0], hub


def _hub(db: Path) -> tuple[float, float]:
    """(polls, poll CPU seconds) of serve's dashboard hub, from its /metrics."""
    with urllib.request.urlopen(_url(db) + "/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("fedmq_dashboard_poll")
    }
    return values["fedmq_dashboard_polls_total"], values["fedmq_dashboard_poll_cpu_seconds_total"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--messages", type=int, default=4000, help="per publisher")
    ap.add_argument("--repeat", type=int, default=2, help="none/tab pairs, alternated")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    total = a.publishers * a.messages
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        work = Path(tmp)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        broker = Broker(work)
        broker.start()
        try:
            api, ready = page_and_api(browser, broker.port, work)
            runs: dict[bool, list[Any]] = {False: [], True: []}
            for _ in range(a.repeat):
                for tab in (False, True):
                    runs[tab].append(ingest(browser, broker.port, work, a.publishers,
                                            a.messages, tab))  # fmt: skip
        finally:
            broker.kill()
            browser.close()
    load_after = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load avg before "
          f"{'/'.join(f'{x:.1f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.1f}' for x in load_after)}")  # fmt: skip
    print(f"{N_SITES} registered sites:")
    print(f"  GET /api/sites      best {min(api):.3f} s  median {statistics.median(api):.3f} s"
          f"  (target <= 0.2 s)")  # fmt: skip
    print(f"  fleet interactive   best {min(ready):.3f} s  median {statistics.median(ready):.3f} s"
          f"  worst {max(ready):.3f} s  (navigation start to markers+table+basemap drawn;"
          f" target <= 1 s)")  # fmt: skip
    print(f"ingest: {a.publishers} publishers x {a.messages} msgs x 10 samples, QoS 1, live, "
          f"{N_SITES} registered sites in the database")  # fmt: skip
    rate = {}
    for tab in (False, True):
        secs = [r[0] for r in runs[tab]]
        cpus = [r[1] for r in runs[tab]]
        rate[tab] = total / statistics.median(secs)
        label = "one fleet tab open" if tab else "no tab"
        print(f"  {label:20}: {rate[tab]:6.0f} msg/s (median of {len(secs)}: "
              f"{', '.join(f'{total / s:.0f}' for s in secs)})  serve CPU "
              f"{statistics.median(cpus) * 1e6 / total:.0f} us/msg")  # fmt: skip
        polls = sum(r[2][0] for r in runs[tab])
        poll_cpu = sum(r[2][1] for r in runs[tab])
        print(f"  {'':20}  hub: {polls:.0f} polls, {poll_cpu:.3f} s CPU in all"
              + (f" ({poll_cpu / polls * 1e3:.1f} ms/poll, {poll_cpu / sum(secs) * 100:.1f}%"
                 " of one core over the ingest windows)" if polls else ""))  # fmt: skip
    print(f"  ratio tab/none: {rate[True] / rate[False]:.2f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
