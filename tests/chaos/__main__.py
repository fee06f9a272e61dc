"""``python -m tests.chaos``: the fault experiments (see docs/reliability.md).

Examples:
    python -m tests.chaos --quick
    python -m tests.chaos --sites 3 --rate 1000 --kills 20 --proxy-stall --disk-full
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from tests.chaos.scenario import Options, quick, run

EXIT_OK = 0
EXIT_FAILED = 1  # a check failed: lost or duplicated data, integrity, no recovery
EXIT_ERROR = 2  # the run itself could not be carried out
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Kill -9 sites, the coordinator (and its writer) and the broker in "
        "bounded loops, stall a site, fill its disk; then account for every sample.",
    )
    p.add_argument("--sites", type=int, default=3, help="site processes [3]")
    p.add_argument("--rate", type=float, default=1000.0, help="samples/s per site [1000]")
    p.add_argument("--kills", type=int, default=20, help="kills per kind [20]")
    p.add_argument("--proxy-stall", action="store_true", help="stall site-0 behind a proxy")
    p.add_argument("--disk-full", action="store_true", help="fill the last site's disk (root)")
    p.add_argument("--disk-hold", type=float, default=10.0, help="seconds the disk stays full")
    p.add_argument("--quick", action="store_true", help="short version: 2 sites, 2 of each")
    p.add_argument("--seed", type=int, default=1, help="random seed [1]")
    p.add_argument("--max-minutes", type=float, default=40.0, help="time box of the faults")
    p.add_argument("--workdir", type=Path, help="keep files here [a new temp dir]")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--verbose", action="store_true", help="log every fault as it happens")
    return p


def _interrupt(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    opts = Options(
        sites=args.sites,
        rate=args.rate,
        kills=args.kills,
        proxy_stall=args.proxy_stall,
        disk_full=args.disk_full,
        disk_hold_s=args.disk_hold,
        seed=args.seed,
        max_minutes=args.max_minutes,
        workdir=args.workdir,
    )
    if args.quick:
        opts = quick(opts)
    try:
        report = run(opts)
    except KeyboardInterrupt:
        print("interrupted: every process of the run was killed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(report.to_json() if args.json else report.to_text())
    return EXIT_OK if report.ok() else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
