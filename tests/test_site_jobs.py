"""Site training parts without syft: settings, job store, chunk buffer, metrics, laziness."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from schemas import TrainChunk, make_blob
from site_node.training.jobs.chunks import ChunkBuffer
from site_node.training.jobs.reporter import finite_metrics
from site_node.training.jobs.store import JobStore, JobStoreError, UnknownJobError
from tests.helpers.broker import Broker
from tests.helpers.mqtt import wait_for
from tests.helpers.site_proc import SITE_BIN, SiteProc, to_toml


def _chunks(raw: bytes, size: int, job: str = "j") -> tuple[object, list[TrainChunk]]:
    blob, parts = make_blob(raw, size)
    return blob, [
        TrainChunk(
            site="s", session=1, job_id=job, index=i, total=len(parts), sha256=blob.sha256, data=p
        )
        for i, p in enumerate(parts)
    ]


def test_chunks_reassemble_in_any_order_with_duplicates_and_foreign_digests() -> None:
    raw = bytes(range(256)) * 40
    blob, chunks = _chunks(raw, 1024)
    _other, foreign = _chunks(b"x" * 10_240, 1024)  # same job id, another sha256
    buf = ChunkBuffer(10 * 1024 * 1024)
    for chunk in [*reversed(chunks[1:]), *foreign, chunks[2]]:
        buf.add(chunk)
    assert buf.try_assemble("j", blob) is None  # type: ignore[arg-type]
    assert buf.missing("j", blob) == [0]  # type: ignore[arg-type]
    buf.add(chunks[0])
    assert buf.try_assemble("j", blob) == raw  # type: ignore[arg-type]


def test_chunks_with_right_digest_but_wrong_bytes_fail_verification() -> None:
    blob, chunks = _chunks(os.urandom(5000), 1024)
    evil = chunks[1].model_copy(update={"data": chunks[0].data})
    buf = ChunkBuffer(1024 * 1024)
    for chunk in [chunks[0], evil, *chunks[2:]]:
        buf.add(chunk)
    with pytest.raises(ValueError, match="verification"):
        buf.try_assemble("j", blob)  # type: ignore[arg-type]


def test_chunk_buffer_is_bounded_dropping_the_oldest_job() -> None:
    buf = ChunkBuffer(1024 * 1024)
    blob_a, a = _chunks(b"a" * 700_000, 100_000, job="a")
    blob_b, b = _chunks(b"b" * 700_000, 100_000, job="b")
    for chunk in [*a, *b]:
        buf.add(chunk)
    assert buf.missing("a", blob_a) == list(range(len(a)))  # type: ignore[arg-type]
    assert buf.try_assemble("b", blob_b) == b"b" * 700_000  # type: ignore[arg-type]


def test_finite_metrics_drops_nan_and_inf() -> None:
    metrics = {"rmse": 12.5, "auc": float("nan"), "loss": float("inf"), "f1": 1}
    assert finite_metrics(metrics) == {"rmse": 12.5, "f1": 1.0}


def test_job_store_decisions_from_a_second_connection(tmp_path: Path) -> None:
    daemon = JobStore(tmp_path / "jobs.db")
    daemon.add("j1", "r", 1, "cmapss-rul", "pending_approval", "{}")
    daemon.add("j2", "r", 1, "cmapss-rul", "running", "{}")
    daemon.set_weights("j1", b"w")
    cli = JobStore(tmp_path / "jobs.db")  # the CLI's own connection (another process)
    with pytest.raises(UnknownJobError):
        cli.decide("nope", "approve")
    with pytest.raises(JobStoreError, match="not pending"):
        cli.decide("j2", "approve")
    cli.decide("j1", "reject", "no")
    with pytest.raises(JobStoreError, match="already decided"):
        cli.decide("j1", "approve")
    [decided] = daemon.decisions()
    assert (decided.job_id, decided.decision, decided.decision_reason) == ("j1", "reject", "no")
    assert [j.job_id for j in daemon.fail_interrupted("site restarted")] == ["j2"]
    assert daemon.get("j2").state == "failed"  # type: ignore[union-attr]
    daemon.set_state("j1", "rejected", "no")
    assert daemon.weights("j1") is None  # weights go once a job is over
    cli.close()
    daemon.close()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SITE_BIN), *args], capture_output=True, text=True, timeout=60)


def test_bad_training_table_is_a_one_line_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text(to_toml({"site_id": "s", "training": {"allow": ["no-such-task"]}}))
    out = _run("run", "--config", str(cfg), "--print-config")
    assert out.returncode == 2 and "no-such-task" in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr


def test_training_cli_on_a_site_without_jobs(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text(to_toml({"site_id": "s", "data_dir": str(tmp_path / "d")}))
    assert _run("jobs", "--config", str(cfg)).stdout.strip() == "no jobs"
    assert json.loads(_run("data", "list", "--config", str(cfg), "--json").stdout) == []
    out = _run("reject", "x", "--reason", "r", "--config", str(cfg))
    assert out.returncode == 3 and "unknown job" in out.stderr
    for cmd in ("jobs", "approve", "reject", "data"):
        assert "Example:" in _run(cmd, "--help").stdout


def test_a_telemetry_only_site_never_loads_torch_or_syft(
    broker: Broker, prefix: str, tmp_path: Path
) -> None:
    from tests.helpers.site_proc import site_settings

    proc = SiteProc(tmp_path / "p", site_settings(tmp_path, broker.port, prefix)).start()
    try:
        wait_for(lambda: proc.status()["connected"], 20, "site connected")
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "/torch/" not in maps and "/syft/" not in maps
    finally:
        proc.kill()
