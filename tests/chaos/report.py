"""The figures of a chaos run: totals, per-fault recovery, integrity, acceptance lines."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.chaos.accounting import SiteTally
from tests.chaos.faults import FaultResult

__all__ = ["RECONNECT_LIMIT_S", "Report"]

RECONNECT_LIMIT_S = 5.0
KILL_KINDS = ("site", "coordinator", "writer", "broker", "mixed")


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} / {max(values):.2f}"


@dataclass
class Report:
    options: dict[str, Any]
    sites: list[SiteTally]
    faults: list[FaultResult]
    integrity: dict[str, str]
    coordinator_exit: int
    coordinator_starts: int
    code: str = ""
    outbox_errors: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    workdir: str = ""

    def totals(self) -> dict[str, int]:
        keys = (
            "produced", "stored", "announced_gap", "lost", "foreign", "samples_stored",
            "samples_distinct", "samples_duplicated", "samples_in_gaps", "samples_missing",
            "samples_dropped", "samples_lost", "final_rows", "final_stored",
        )  # fmt: skip
        return {k: sum(int(getattr(t, k)) for t in self.sites) for k in keys}

    def kills(self) -> int:
        return sum(1 for f in self.faults if f.kind in KILL_KINDS)

    def acceptance(self) -> list[tuple[str, bool, str]]:
        t = self.totals()
        broker_faults = [f for f in self.faults if f.kind == "broker" or "broker" in f.detail]
        reconnects = [f.reconnect_s for f in broker_faults if f.reconnect_s is not None]
        disk = [f for f in self.faults if f.kind == "disk_full"]
        unrecovered = [f for f in self.faults if f.recover_s is None]
        out = [
            (
                "0 lost, 0 duplicated acked samples",
                t["lost"] == 0 and t["samples_lost"] == 0 and t["samples_duplicated"] == 0
                and t["foreign"] == 0,
                f"{t['lost']} lost messages, {t['samples_lost']} lost and "
                f"{t['samples_duplicated']} duplicated samples over {self.kills()} kills",
            ),
            (
                "SQLite integrity_check ok",
                all(v == "ok" for v in self.integrity.values()),
                ", ".join(f"{k}: {v}" for k, v in self.integrity.items()),
            ),
            (
                "every fault recovered",
                not unrecovered,
                f"{len(self.faults) - len(unrecovered)}/{len(self.faults)}",
            ),
        ]  # fmt: skip
        if broker_faults:
            worst = max(reconnects) if reconnects else None
            out.append(
                (
                    f"reconnect within {RECONNECT_LIMIT_S:.0f} s of the broker's return",
                    worst is not None
                    and len(reconnects) == len(broker_faults)
                    and worst <= RECONNECT_LIMIT_S,
                    f"max {worst if worst is None else round(worst, 2)} s over "
                    f"{len(reconnects)}/{len(broker_faults)} broker restarts",
                )
            )
        for f in disk:
            survived = "survived without a restart" in f.notes
            out.append(
                (
                    "full disk survived and recovered without a restart",
                    survived and f.recover_s is not None,
                    "; ".join(f.notes)
                    + ("" if f.recover_s is None else f"; recovered {f.recover_s:.2f} s after"),
                )
            )
        return out

    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.acceptance())

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok(),
            "totals": self.totals(),
            "acceptance": [{"check": c, "pass": p, "value": v} for c, p, v in self.acceptance()],
            "sites": [t.as_dict() for t in self.sites],
            "faults": [asdict(f) for f in self.faults],
            "integrity": self.integrity,
            "coordinator_exit": self.coordinator_exit,
            "coordinator_starts": self.coordinator_starts,
            "outbox_errors": self.outbox_errors,
            "notes": self.notes,
            "options": self.options,
            "code": self.code,
            "wall_s": round(self.wall_s, 1),
            "workdir": self.workdir,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def to_text(self) -> str:
        o, t = self.options, self.totals()
        lines = [
            f"fedmq chaos: {o['sites']} sites x {o['rate']:g} samples/s, {len(self.faults)} "
            f"faults ({self.kills()} kill -9) in {self.wall_s:.0f} s, seed {o['seed']}, "
            f"code {self.code}",
            "",
            f"{'fault':<12}{'count':>6}{'recovered':>10}  {'recover s med/max':>18}"
            f"  {'reconnect s med/max':>20}",
        ]
        for kind in (*KILL_KINDS, "stall", "disk_full"):
            fs = [f for f in self.faults if f.kind == kind]
            if not fs:
                continue
            rec = [f.recover_s for f in fs if f.recover_s is not None]
            con = [f.reconnect_s for f in fs if f.reconnect_s is not None]
            lines.append(
                f"{kind:<12}{len(fs):>6}{len(rec):>10}  {_spread(rec):>18}  {_spread(con):>20}"
            )
        lines += [
            "",
            f"{'site':<8}{'epoch':<14}{'produced':>9}{'stored':>9}{'gaps':>6}{'lost':>6}"
            f"{'samples':>10}{'dup':>5}{'missing':>8}{'dropped':>8}{'lost':>6}{'final':>12}",
        ]
        for s in self.sites:
            epoch = ",".join(e or '""' for e in s.epochs)[:13]
            lines.append(
                f"{s.site:<8}{epoch:<14}{s.produced:>9}{s.stored:>9}{s.announced_gap:>6}"
                f"{s.lost:>6}{s.samples_distinct:>10}{s.samples_duplicated:>5}"
                f"{s.samples_missing:>8}{s.samples_dropped:>8}{s.samples_lost:>6}"
                f"{f'{s.final_stored}/{s.final_rows}':>12}"
            )
            if s.lost_seqs:
                lines.append(f"  lost seqs: {s.lost_seqs}")
        lines += [
            "",
            f"produced {t['produced']} messages, stored {t['stored']}, lost {t['lost']}, "
            f"announced gaps {t['announced_gap']}; samples stored {t['samples_stored']} "
            f"({t['samples_duplicated']} duplicated), lost {t['samples_lost']}, "
            f"announced drops {t['samples_dropped']} (+{t['samples_in_gaps']} in gaps)",
            "integrity_check: " + ", ".join(f"{k} {v}" for k, v in self.integrity.items()),
            f"coordinator: started {self.coordinator_starts} times, last exit code "
            f"{self.coordinator_exit}",
        ]
        for site, errors in self.outbox_errors.items():
            lines.append(f"{site} announced outbox errors: {errors[:3]}")
        for f in self.faults:
            if f.notes and f.notes != ["survived without a restart"]:
                lines.append(f"note: {f.kind} ({f.detail}): {'; '.join(f.notes)}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append("")
        for check, passed, value in self.acceptance():
            lines.append(f"{'PASS' if passed else 'FAIL'}  {check}: {value}")
        lines.append(f"workdir: {self.workdir}")
        return "\n".join(lines)
