"""Job folders are keyed collision-free; unsigned train chunks are bounded per job and overall."""

from __future__ import annotations

import base64
import hashlib
import keyword
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from schemas import TrainChunk, make_blob
from site_node.training.job_files import func_name
from site_node.training.jobs.chunks import CHUNK_OVERHEAD, ChunkBuffer

JOB_IDS = st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True)


def test_ids_differing_only_by_dash_or_underscore_get_their_own_folders() -> None:
    names = {func_name(j) for j in ("a-1", "a_1", "a1", "a__1", "a-_1", "a_-1", "a--1")}
    assert len(names) == 7
    assert func_name("job42") == "fedmq_job_job42"  # plain ids keep their old folder


@given(JOB_IDS, JOB_IDS)
def test_func_name_is_one_to_one(a: str, b: str) -> None:
    assert (func_name(a) == func_name(b)) == (a == b)


@given(JOB_IDS)
def test_func_name_is_a_python_name_and_a_file_name(job_id: str) -> None:
    name = func_name(job_id)
    assert name.isidentifier() and not keyword.iskeyword(name)
    assert len(f"{name}.py".encode()) <= 255


def test_long_ids_are_hashed_and_still_distinct() -> None:
    a, b = "x-" * 64, "x_" * 64
    assert func_name(a) != func_name(b)
    assert func_name(a).endswith(hashlib.sha256(a.encode()).hexdigest())


def _chunk(job: str, index: int, data: str = "", total: int = 10**9) -> TrainChunk:
    return TrainChunk(site="s", session=1, job_id=job, index=index, total=total,
                      sha256="0" * 64, data=data)  # fmt: skip


def test_empty_chunk_flood_for_one_job_is_bounded_by_count() -> None:
    buf = ChunkBuffer(256 * 1024 * 1024)
    tracemalloc.start()
    try:
        for i in range(30_000):
            buf.add(_chunk("flood", i))
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert buf.chunks == 4_096
    assert held < 16 * 1024 * 1024, held  # ~45 MB (1.5 KiB a chunk) without the bound


def test_floods_over_many_jobs_evict_oldest_within_total_count() -> None:
    buf = ChunkBuffer(256 * 1024 * 1024, max_chunks=1_000, max_job_chunks=100)
    for i in range(50_000):
        buf.add(_chunk(f"job{i % 500}", i))
    assert buf.chunks <= 1_000
    assert buf.held_bytes == buf.chunks * CHUNK_OVERHEAD


def test_per_job_bytes_and_a_real_blob_still_assembles() -> None:
    raw = bytes(range(256)) * 64  # 16 KiB
    blob, parts = make_blob(raw, 4096)
    buf = ChunkBuffer(1024 * 1024, max_job_bytes=64 * 1024)
    # Another job hits its byte limit; it neither grows further nor evicts the real one.
    for i in range(100):
        buf.add(_chunk("greedy", i, data="A" * 8192))
    assert buf.held_bytes <= 64 * 1024
    for i, part in enumerate(parts):
        buf.add(TrainChunk(site="s", session=1, job_id="real", index=i, total=len(parts),
                           sha256=blob.sha256, data=part))  # fmt: skip
    assert buf.try_assemble("real", blob) == raw
    assert base64.b64decode(parts[0])  # the parts were real base64


def test_chunk_index_beyond_total_is_dropped() -> None:
    buf = ChunkBuffer(1024 * 1024)
    buf.add(_chunk("j", 5, total=5))
    assert buf.chunks == 0
