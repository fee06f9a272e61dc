"""Resident memory of an idle training-enabled site (issue 18's "<= 60 MB"), and of its twin.

Command (not collected by pytest)::

    .venv/bin/python -m tests.bench.bench_idle_rss [--seconds 20] [--host-with-worker]

Starts a Mosquitto, one ``fedmq-site run`` with ``[training]`` (a pinned coordinator key,
so signed commands are verified, and one 20 Hz file device) and its twin without
``[training]``, waits ``--seconds`` and prints, per process and in total: ``VmRSS`` from
``/proc/PID/status`` and ``Rss``, ``Pss``, ``Anonymous`` from ``/proc/PID/smaps_rollup``,
sampled five times (the last is shown with the min..max). By default the datasite's
hosted-datasets record is written first, so no training worker starts (what a restarted
site looks like); with ``--host-with-worker`` the worker starts at boot, hosts the dataset
and stops after ``worker_idle_s`` (4 s), and the sampling starts once it is gone.
``--env NAME=VALUE`` (repeatable) sets an environment variable of both sites (e.g. to try
``MALLOC_ARENA_MAX=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import psutil

from coordinator.admin.signing import generate_keypair
from tests.helpers.broker import Broker
from tests.helpers.data import TRAIN_FD001
from tests.helpers.site_proc import SiteProc, site_settings

TASK = "cmapss-rul"


def rollup(pid: int) -> dict[str, float]:
    """VmRSS and the smaps_rollup totals of ``pid`` in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["VmRSS"] = int(line.split()[1]) / 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Anonymous", "Private_Clean", "Private_Dirty", "Shared_Clean"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def tree(pid: int) -> list[int]:
    root = psutil.Process(pid)
    return [root.pid, *(c.pid for c in root.children(recursive=True))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="idle time before sampling")
    ap.add_argument("--host-with-worker", action="store_true",
                    help="let the worker host the dataset at boot, then stop (slow)")  # fmt: skip
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args()
    for item in args.env:
        name, _, value = item.partition("=")
        os.environ[name] = value
    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-rss-"))
    broker = Broker(tmp)
    broker.start()
    generate_keypair(tmp / "coord.key", tmp / "coord.pub")
    prefix = "bench-idle/fedmq/v1"
    training = {
        "allow": [TASK],
        "datasets": [{"name": "fd", "task": TASK, "paths": [str(TRAIN_FD001)],
                      "params": {"units": [1, 2, 3]}}],
        "worker_idle_s": 4.0, "threads": 1,
    }  # fmt: skip
    settings = site_settings(tmp, broker.port, prefix, site_id="w", rate_hz=20.0,
                             coordinator_public_key_file=str(tmp / "coord.pub"),
                             training=training)  # fmt: skip
    if not args.host_with_worker:
        syft = Path(settings["data_dir"]) / "syft"
        syft.mkdir(parents=True)
        record = {"fd": {"task": TASK, "rows": 600, "columns": ["a"], "paths": [], "params": {}}}
        (syft / "datasets.json").write_text(json.dumps(record))
    twin_cfg = {k: v for k, v in settings.items() if k != "training"}
    twin_cfg.update(site_id="twin", data_dir=str(tmp / "twin-data"))
    site = SiteProc(tmp / "w", settings, suite_nice=False).start()
    twin = SiteProc(tmp / "twin", twin_cfg, suite_nice=False).start()
    try:
        if args.host_with_worker:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 600:
                time.sleep(1.0)
                if len(tree(site.pid)) == 1 and "stopped (peak RSS" in site.log_text():
                    break
            print(f"worker hosted and stopped after {time.monotonic() - t0:.0f} s")
        time.sleep(args.seconds)
        samples: dict[str, list[dict[str, float]]] = {"training site": [], "twin": []}
        for _ in range(5):
            for label, proc in (("training site", site), ("twin", twin)):
                total: dict[str, float] = {}
                for pid in tree(proc.pid):
                    for k, v in rollup(pid).items():
                        total[k] = total.get(k, 0.0) + v
                total["procs"] = len(tree(proc.pid))
                samples[label].append(total)
            time.sleep(1.0)
        for label, rows in samples.items():
            last = rows[-1]
            print(f"{label}:")
            for key in last:
                lo, hi = min(r[key] for r in rows), max(r[key] for r in rows)
                print(f"  {key:14s} {last[key]:7.1f}  ({lo:.1f}..{hi:.1f})")
    finally:
        site.kill()
        twin.kill()
        broker.kill()


if __name__ == "__main__":
    main()
