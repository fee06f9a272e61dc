"""The coordinator holds no task code: it trains on the code hash most sites advertise,
says which sites it left out and why, and refuses to choose between tied hashes.

Unit tests of the choice, then the real path: ``fedmq serve`` and ``fedmq train`` with
fake training sites (no syft) advertising different hashes of one task.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.admin.signing import generate_keypair
from coordinator.training.aggregate import dump_npz
from coordinator.training.events import TrainError
from coordinator.training.select import Offer, choose_hash
from tests.helpers.broker import Broker
from tests.helpers.coord_proc import Coordinator, fedmq, sites_json, wait_until
from tests.helpers.fake_trainer import FakeTrainer

A, B, C = "a" * 64, "b" * 64, "c" * 64
TASK = "shared-task"


def _offers(**sites: str) -> list[Offer]:
    return [Offer(site, code_hash, "auto") for site, code_hash in sites.items()]


def test_majority_hash_and_a_note_naming_who_is_left_out() -> None:
    assert choose_hash(_offers(s1=A, s2=A)) == (A, "")
    code_hash, note = choose_hash(_offers(s3=B, s1=A, s2=A, s4=C, s5=A))
    assert code_hash == A
    assert note == (
        "sites disagree on the task's code hash: using aaaaaaaaaaaa (3 of 5 sites: s1, s2, "
        "s5); left out: s3 (runs bbbbbbbbbbbb); s4 (runs cccccccccccc)"
    )


def test_a_tie_is_refused_with_the_groups() -> None:
    with pytest.raises(TrainError) as exc:
        choose_hash(_offers(s1=A, s2=B, s3=B, s4=A, s5=C))
    assert str(exc.value) == (
        "sites disagree on the task's code hash and no hash has the most sites "
        "(aaaaaaaaaaaa: s1, s4; bbbbbbbbbbbb: s2, s3; cccccccccccc: s5); pick one group "
        "with --sites, or give the sites the same task files"
    )
    with pytest.raises(TrainError, match="no site"):
        choose_hash([])


# --- the real path -----------------------------------------------------------------------


def _answer(_rnd: int, glob: dict[str, np.ndarray] | None) -> tuple[bytes, int]:
    base = glob if glob is not None else {"w": np.zeros(3, np.float32)}
    return dump_npz({k: v + np.float32(1) for k, v in base.items()}), 10


@pytest.fixture
def serve(broker: Broker, tmp_path: Path) -> Iterator[tuple[str, Path, Callable[..., Any]]]:
    prefix = f"test-{uuid.uuid4().hex[:10]}/fedmq/v1"
    generate_keypair(tmp_path / "coord.key", tmp_path / "coord.pub")
    coord = Coordinator(tmp_path / "coord.db", broker.port, prefix,
                        ("--signing-key", str(tmp_path / "coord.key")))  # fmt: skip
    fakes: list[FakeTrainer] = []

    def site(name: str, code_hash: str) -> FakeTrainer:
        fake = FakeTrainer(broker.port, prefix, name, TASK, code_hash, _answer, 100)
        fakes.append(fake)
        fake.start()
        return fake

    try:
        coord.start().wait_ready(60)
        yield prefix, tmp_path / "coord.db", site
    finally:
        for fake in fakes:
            fake.stop()
        coord.kill()


def _train(db: Path, sites: list[str], *args: str) -> Any:
    wait_until(
        lambda: all(sites_json(db).get(s, {}).get("state") == "online" for s in sites),
        60, f"{sites} online", step=0.3,
    )  # fmt: skip
    return fedmq("train", "--task", TASK, "--round-timeout", "30", "--wait-sites", "20",
                 "--db", str(db), "--json", *args, timeout=120, check=False)  # fmt: skip


def test_fedmq_train_uses_the_majority_and_refuses_a_tie(
    serve: tuple[str, Path, Callable[..., Any]],
) -> None:
    _prefix, db, site = serve
    for name, code_hash in (("p1", A), ("p2", A), ("p3", A), ("p4", B)):
        site(name, code_hash)
    proc = _train(db, ["p1", "p2", "p3", "p4"], "--rounds", "1", "--min-sites", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = events[0]
    assert started["event"] == "run_started" and sorted(started["sites"]) == ["p1", "p2", "p3"]
    assert "left out: p4 (runs bbbbbbbbbbbb)" in started["note"]
    run = json.loads(fedmq("run", started["run_id"], "--db", str(db), "--json").stdout)
    assert run["code_hash"] == A and run["rounds"][0]["state"] == "aggregated"

    site("p5", B)  # now 3 sites run A and 2 run B; restricted to two of each: a tie
    proc = _train(db, ["p1", "p2", "p4", "p5"], "--rounds", "1", "--min-sites", "2",
                  "--sites", "p1,p2,p4,p5")  # fmt: skip
    assert proc.returncode != 0
    assert "no hash has the most sites (aaaaaaaaaaaa: p1, p2; bbbbbbbbbbbb: p4, p5)" in (
        proc.stdout + proc.stderr
    )
