"""Telemetry decode and insert in a child process, so they run on another core.

On a small machine the coordinator's paho network thread and its writer share one GIL:
measured here, decoding (pydantic) and inserting (sqlite3) the samples took most of the
writer's CPU and slowed paho's reading. The writer thread therefore hands raw telemetry
``(topic, payload, received_at)`` batches to this child, which validates each payload
fully, inserts it idempotently, **commits**, and only then answers ``(site, seq, gaps)``
per message (``None`` for anything it did not store: the parent handles those itself,
dead letters included). The parent sends PUBACKs and acks after that answer, so a crash
of either process loses nothing acked: uncommitted work is rolled back and redelivered.
While the child stores one batch, the parent may decode some of the next one itself
(:func:`predecode`: the same validation, pickled rows); the child then only inserts those.

The child opens the same store as the parent: a SQLite file, or a PostgreSQL database
(``postgresql://``, telemetry COPYed in). The child is the only process that inserts
telemetry; the parent never writes while a batch is in the child (it would wait for the
child's lock while the child waits for it).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import pickle
import signal
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field
from typing_extensions import NotRequired, TypedDict

from coordinator.ingest.batch import durable_row
from coordinator.store import DurableRow
from coordinator.store.open import open_store, unavailable_errors
from schemas import Codec, TelemetryBatch, Topics
from schemas.envelope import DurableEnvelope, EpochMs, Level
from schemas.errors import TopicError
from schemas.topics import Channel, ParsedTopic
from schemas.version import MAJOR, major_of

__all__ = [
    "CachedTopics",
    "Stored",
    "WriterError",
    "WriterProcess",
    "decode_telemetry",
    "decode_telemetry_row",
    "predecode",
    "telemetry_row",
]

log = logging.getLogger(__name__)

Stored = tuple[str, str, int, tuple[tuple[int, int], ...], bool]
"""What the child reports per stored message: site, epoch, seq, announced gaps and
whether it is a replay (``historical``)."""


class WriterError(RuntimeError):
    """The writer process failed or went away; nothing after its last answer is acked."""


class CachedTopics(Topics):
    """Topics whose ``parse`` remembers recent results: a site's topics repeat endlessly,
    and parsing (regexes per level) cost ~10% of the writer's time per message."""

    def parse(self, topic: str) -> ParsedTopic:
        cache: dict[str, ParsedTopic] = self.__dict__.setdefault("_cache", {})
        hit = cache.get(topic)
        if hit is None:
            hit = super().parse(topic)  # raises TopicError for bad topics: never cached
            if len(cache) >= 100_000:
                cache.clear()
            cache[topic] = hit
        return hit


def decode_telemetry(codec: Codec, topic: str, payload: bytes) -> TelemetryBatch | None:
    """``codec.decode`` for a valid telemetry message, about twice as fast; else None.

    The message union finds its ``kind`` discriminator by parsing the JSON before
    validating it (measured ~35 us vs ~18 us per 10-sample batch here), but the topic
    already says which model applies. Returns exactly what ``codec.decode`` would return
    whenever that is a :class:`TelemetryBatch` (same model, same size, version, kind,
    site and device checks); None for anything else, so the caller runs ``codec.decode``
    for the precise rejection reason.
    """
    return _validated(TelemetryBatch, codec, topic, payload)


_Batch = TypeVar("_Batch", TelemetryBatch, "_FastTelemetry")


def _validated(model: type[_Batch], codec: Codec, topic: str, payload: bytes) -> _Batch | None:
    """``model`` of a telemetry payload with every check ``codec.decode`` makes (size,
    topic, kind, major version, site and device of the topic); None for anything else."""
    if not payload or len(payload) > codec.max_payload:
        return None
    try:
        parsed = codec.topics.parse(topic)
    except TopicError:
        return None
    if parsed.channel is not Channel.TELEMETRY:
        return None
    try:
        msg = model.model_validate_json(payload)
    except Exception:  # ValidationError, or pydantic-core on pathological input
        return None
    # The union requires "kind"; the model alone would default it.
    if "kind" not in msg.model_fields_set or major_of(msg.v) != MAJOR:
        return None
    if msg.site != parsed.site or msg.device != parsed.device:
        return None
    return msg


class _SampleFields(TypedDict):
    """:class:`schemas.Sample`'s fields and constraints, validated into a dict: the
    model's instance per sample (and its Python ``value`` validator) cost about half of
    the decode at 100 samples per message. ``test_coord_writer_proc`` checks both agree."""

    ts: EpochMs
    name: Annotated[str, Field(min_length=1, max_length=128)]
    value: Annotated[float, Field(allow_inf_nan=False)]
    unit: NotRequired[Annotated[str, Field(max_length=32)]]
    q: NotRequired[Literal["good", "uncertain", "bad"]]


class _FastTelemetry(DurableEnvelope):
    """:class:`schemas.TelemetryBatch` with its samples as :class:`_SampleFields`."""

    kind: Literal["telemetry"] = "telemetry"
    device: Level
    samples: list[_SampleFields] = Field(min_length=1, max_length=10_000)


def decode_telemetry_row(
    codec: Codec, topic: str, payload: bytes, received_at: int
) -> tuple[DurableRow, Stored] | None:
    """The store row and :data:`Stored` of a valid telemetry message, exactly as
    ``telemetry_row(decode_telemetry(...))`` builds them, at about half the CPU per sample;
    None whenever :func:`decode_telemetry` would answer None."""
    msg = _validated(_FastTelemetry, codec, topic, payload)
    if msg is None:
        return None
    samples = [
        (s["name"], s["ts"], s["value"], s.get("unit", ""), s.get("q", "good")) for s in msg.samples
    ]
    row = durable_row(msg, received_at, msg.device, None, samples, None)
    gaps = tuple((g.first, g.last) for g in msg.gaps)
    return row, (msg.site, msg.epoch, msg.seq, gaps, msg.historical)


def predecode(codec: Codec, topic: str, payload: bytes, received_at: int) -> bytes | None:
    """:func:`decode_telemetry_row` done by the parent while the child is busy, pickled
    for :meth:`WriterProcess.submit` (the same validation; the child then only inserts):
    unpickling costs the child about a third of decoding. None for what the child must
    decode itself (anything :func:`decode_telemetry_row` refuses)."""
    got = decode_telemetry_row(codec, topic, payload, received_at)
    return None if got is None else pickle.dumps(got, pickle.HIGHEST_PROTOCOL)


def telemetry_row(msg: TelemetryBatch, received_at: int) -> DurableRow:
    """The store row of a decoded telemetry batch."""
    samples = [(s.name, s.ts, s.value, s.unit, s.q) for s in msg.samples]
    return durable_row(msg, received_at, msg.device, None, samples, None)


def _serve(conn: Connection, db: str, prefix: str, max_payload: int) -> None:
    """The child: receive raw batches until None or EOF; store, commit, answer."""
    # The parent decides when we stop (Ctrl-C and SIGTERM reach the whole group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    store = open_store(db)  # the parent applied every migration before starting us
    unavailable = unavailable_errors(db)
    codec = Codec(CachedTopics(prefix), max_payload)
    try:
        while True:
            try:
                batch = conn.recv()
            except EOFError:  # the parent died: our last uncommitted batch is not acked
                break
            if batch is None:
                break
            held = isinstance(batch, tuple)  # ("hold", entries): insert after release()
            if held:
                batch = batch[1]
            rows: list[DurableRow] = []
            out: list[Stored | None] = []
            for entry in batch:
                if isinstance(entry, bytes):  # decoded by the parent: see predecode
                    got = pickle.loads(entry)
                else:
                    got = decode_telemetry_row(codec, *entry)
                if got is None:
                    out.append(None)
                    continue
                rows.append(got[0])
                out.append(got[1])
            if held:
                try:
                    go = conn.recv()
                except EOFError:
                    break
                if go is None:
                    break
            try:
                store.add_messages(rows)
                store.commit()
            except unavailable:
                raise  # the storage itself: the parent retries the batch
            except Exception as exc:  # a row the store refuses: the parent isolates it
                store.rollback()
                log.warning("writer process: batch refused (%s); the parent retries it", exc)
                out = [None] * len(out)
            conn.send(out)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        store.close()


class WriterProcess:
    """Parent-side handle of the child: ``start``, ``submit`` + ``results``, ``stop``."""

    def __init__(self, db: Path | str, prefix: str, max_payload: int) -> None:
        self.db, self.prefix, self.max_payload = str(db), prefix, max_payload
        self._conn: Connection | None = None
        self._proc: Any = None

    @property
    def started(self) -> bool:
        return self._proc is not None

    def start(self) -> None:
        # spawn, not fork: the parent already runs threads (paho, liveness).
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve,
            args=(child, self.db, self.prefix, self.max_payload),
            name="fedmq-writer",
            daemon=True,
        )
        self._proc.start()
        child.close()
        log.info("writer process %s started", self._proc.pid)

    def submit(self, batch: Sequence[tuple[str, bytes, int] | bytes], hold: bool = False) -> None:
        """Send one batch; :meth:`results` answers it once it is committed. Each entry
        is a raw ``(topic, payload, received_at)`` or what :func:`predecode` made of one.
        ``hold``: the child decodes it but writes nothing until :meth:`release` (the
        parent's own commit meanwhile never waits for the child's write lock, nor the
        child for the parent's)."""
        assert self._conn is not None
        try:
            self._conn.send(("hold", list(batch)) if hold else list(batch))
        except OSError as exc:
            raise WriterError(f"writer process gone: {exc}") from None

    def release(self) -> None:
        """Let the child store the batch submitted with ``hold``."""
        assert self._conn is not None
        try:
            self._conn.send(True)
        except OSError as exc:
            raise WriterError(f"writer process gone: {exc}") from None

    def ready(self, timeout: float | None = 0.0) -> bool:
        """Whether the submitted batch's answer is there (waits up to ``timeout`` s;
        None: until it is)."""
        assert self._conn is not None
        try:
            return self._conn.poll(timeout)
        except (EOFError, OSError):
            return True  # gone: results() says so

    def results(self) -> list[Stored | None]:
        """Block until the submitted batch is committed; one entry per message."""
        assert self._conn is not None
        try:
            got = self._conn.recv()
        except (EOFError, OSError):
            raise WriterError(f"writer process exited ({self._proc.exitcode})") from None
        if isinstance(got, str):
            raise WriterError(f"writer process failed: {got}")
        return got  # type: ignore[no-any-return]

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to finish and wait for it."""
        if self._proc is None or self._conn is None:
            return
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(2)
        self._conn.close()
        self._proc = None
