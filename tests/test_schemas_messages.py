"""Every message kind: hypothesis strategies, encode/decode round trips, forward compatibility.

The strategies and ``topic_for`` here are also used by the codec, export and broker tests.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import (
    ALL_MODELS,
    JOB_STATES,
    Ack,
    Alarm,
    CancelCommand,
    Channel,
    Cleared,
    Codec,
    CoordinatorStatus,
    DatasetSummary,
    DeployChunk,
    DeployCommand,
    DeploymentStatus,
    DeviceInfo,
    Heartbeat,
    JobResult,
    JobStatus,
    Location,
    ParsedTopic,
    PingCommand,
    PlantHierarchy,
    Prediction,
    PredictionOutput,
    RebirthCommand,
    Registration,
    ResultChunk,
    Sample,
    SensorSpec,
    SeqRange,
    SiteStatus,
    TaskOffer,
    TelemetryBatch,
    TelemetryDevice,
    Topics,
    TrainChunk,
    TrainCommand,
    WeightsBlob,
    decode,
    encode,
)
from schemas.errors import DecodeError, Reason
from schemas.messages import CHANNEL_KINDS, COMMAND_KINDS, DURABLE_KINDS
from schemas.topics import RETAINED

# -- field strategies --------------------------------------------------------------------

site_ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)
levels = st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True)
prefixes = st.lists(levels, min_size=1, max_size=4).map("/".join)
counters = st.integers(min_value=0, max_value=2**63 - 1)
epoch_ms = st.integers(min_value=0, max_value=32_503_680_000_000)
hex64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=0, exclude_min=True, allow_infinity=False)
non_negative = st.floats(min_value=0, allow_infinity=False)
percent = st.none() | st.floats(min_value=0, max_value=100)
short_text = st.text(max_size=40)
gaps = st.lists(
    st.tuples(st.integers(1, 10**9), st.integers(1, 10**9)).map(
        lambda p: SeqRange(first=min(p), last=max(p))
    ),
    max_size=3,
).map(tuple)


def _envelope(durable: bool = False, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "v": st.from_regex(r"1\.[0-9]{1,3}", fullmatch=True),
        "site": site_ids,
        "session": counters,
        "seq": st.integers(min_value=1 if durable else 0, max_value=2**63 - 1),
        "ts": epoch_ms,
        "historical": st.booleans(),
    }
    if durable:
        fields["gaps"] = gaps
    return {**fields, **extra}


weights_blobs = st.builds(
    WeightsBlob,
    size=counters,
    sha256=hex64,
    data=st.none() | st.text(alphabet="ABCDEFabcdef0123456789+/=", max_size=64),
    chunks=st.integers(0, 10_000),
)
samples = st.builds(
    Sample,
    ts=epoch_ms,
    name=st.text(min_size=1, max_size=128),
    value=finite,
    unit=st.text(max_size=32),
    q=st.sampled_from(["good", "uncertain", "bad"]),
)
_command: dict[str, Any] = {"cmd_id": levels, "expires_at": epoch_ms, "signature": short_text}
_chunk: dict[str, Any] = {
    "job_id": levels,
    "index": st.integers(0, 10_000),
    "total": st.integers(1, 10_000),
    "sha256": hex64,
    "data": short_text,
}
_job: dict[str, Any] = {
    "job_id": levels,
    "run_id": st.text(max_size=128),
    "round": counters,
    "task": st.none() | levels,
}

STRATEGIES: dict[type[BaseModel], st.SearchStrategy[Any]] = {
    SiteStatus: st.builds(
        SiteStatus,
        **_envelope(
            state=st.sampled_from(["online", "offline"]),
            reason=st.none() | st.text(max_size=200),
        ),
    ),
    Registration: st.builds(
        Registration,
        **_envelope(
            name=st.text(max_size=200),
            hierarchy=st.builds(
                PlantHierarchy,
                enterprise=st.none() | short_text,
                site=st.none() | short_text,
                area=st.none() | short_text,
                line=st.none() | short_text,
            ),
            location=st.none()
            | st.builds(Location, lat=st.floats(-90, 90), lon=st.floats(-180, 180)),
            labels=st.dictionaries(short_text, short_text, max_size=3),
            software_version=short_text,
            schema_version=short_text,
            device=st.builds(
                DeviceInfo,
                hostname=st.none() | short_text,
                cpu_count=st.none() | st.integers(1, 1024),
                cuda=st.booleans(),
                platform=st.none() | short_text,
            ),
            telemetry=st.lists(
                st.builds(
                    TelemetryDevice,
                    device=levels,
                    source=st.sampled_from(["serial", "system", "file"]),
                    sensors=st.lists(
                        st.builds(
                            SensorSpec,
                            name=st.text(min_size=1, max_size=128),
                            unit=st.text(max_size=32),
                        ),
                        max_size=3,
                    ).map(tuple),
                ),
                max_size=2,
            ).map(tuple),
            tasks=st.lists(
                st.builds(TaskOffer, name=levels, version=short_text, code_hash=hex64),
                max_size=2,
            ).map(tuple),
            datasets=st.lists(
                st.builds(DatasetSummary, name=levels, rows=counters, description=short_text),
                max_size=2,
            ).map(tuple),
            approval_mode=st.sampled_from(["auto", "manual"]),
            heartbeat_interval_s=positive,
        ),
    ),
    Heartbeat: st.builds(
        Heartbeat,
        **_envelope(
            interval_s=positive,
            uptime_s=non_negative,
            cpu_percent=st.none() | non_negative,
            mem_percent=percent,
            disk_percent=percent,
            outbox_depth=counters,
            outbox_bytes=counters,
            outbox_dropped=counters,
            last_acked=counters,
            jobs_running=counters,
        ),
    ),
    Prediction: st.builds(
        Prediction,
        **_envelope(
            durable=True,
            device=levels,
            model_version=st.text(min_size=1, max_size=128),
            task=levels,
            window_end=epoch_ms,
            outputs=st.dictionaries(
                st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
                st.builds(PredictionOutput, value=finite, unit=st.text(max_size=32)),
                min_size=1,
                max_size=5,
            ),
        ),
    ),
    Alarm: st.builds(
        Alarm,
        **_envelope(
            device=levels,
            alarm_id=levels,
            state=st.sampled_from(["active", "cleared"]),
            severity=st.sampled_from(["info", "warning", "critical"]),
            rule=st.text(max_size=200),
            value=st.none() | finite,
            model_version=st.text(max_size=128),
            since=epoch_ms,
        ),
    ),
    TelemetryBatch: st.builds(
        TelemetryBatch,
        **_envelope(
            durable=True,
            device=levels,
            samples=st.lists(samples, min_size=1, max_size=5).map(tuple),
        ),
    ),
    JobStatus: st.builds(
        JobStatus,
        **_envelope(
            durable=True,
            **_job,
            state=st.sampled_from(JOB_STATES),
            progress=st.none() | st.floats(0, 1),
            reason=st.none() | st.text(max_size=500),
        ),
    ),
    JobResult: st.builds(
        JobResult,
        **_envelope(
            durable=True,
            **_job,
            n_samples=counters,
            metrics=st.dictionaries(short_text, finite, max_size=4),
            weights=st.none() | weights_blobs,
            train_time_s=non_negative,
        ),
    ),
    ResultChunk: st.builds(ResultChunk, **_envelope(durable=True, **_chunk)),
    Ack: st.builds(Ack, **_envelope(acked=counters)),
    TrainCommand: st.builds(
        TrainCommand,
        **_envelope(
            **_command,
            job_id=levels,
            run_id=st.text(max_size=128),
            round=counters,
            task=levels,
            code_hash=hex64,
            strategy=st.sampled_from(["fedavg", "fedprox"]),
            hyperparams=st.dictionaries(
                short_text, finite | st.integers() | short_text | st.booleans(), max_size=4
            ),
            weights=st.none() | weights_blobs,
        ),
    ),
    TrainChunk: st.builds(TrainChunk, **_envelope(**_chunk)),
    DeployCommand: st.builds(
        DeployCommand,
        **_envelope(
            **_command,
            deployment_id=levels,
            model_version=st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True),
            task=levels,
            code_hash=hex64,
            weights=weights_blobs,
            cadence_s=st.floats(0.1, 86_400.0),
            rules=st.lists(st.text(min_size=1, max_size=200), max_size=3).map(tuple),
            devices=st.lists(levels, max_size=3).map(tuple),
            rollback=st.booleans(),
        ),
    ),
    DeployChunk: st.builds(DeployChunk, **_envelope(**_chunk)),
    DeploymentStatus: st.builds(
        DeploymentStatus,
        **_envelope(
            durable=True,
            deployment_id=levels,
            model_version=st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True),
            task=levels,
            code_hash=st.just("") | hex64,
            state=st.sampled_from(
                ["accepted", "pending_approval", "active", "rejected", "failed", "replaced"]
            ),
            reason=st.text(max_size=500),
            since=epoch_ms,
            previous_version=st.text(max_size=128),
            devices=st.lists(levels, max_size=3).map(tuple),
        ),
    ),
    CancelCommand: st.builds(
        CancelCommand, **_envelope(**_command, job_id=levels, reason=st.text(max_size=500))
    ),
    RebirthCommand: st.builds(RebirthCommand, **_envelope(**_command)),
    PingCommand: st.builds(PingCommand, **_envelope(**_command)),
    CoordinatorStatus: st.builds(
        CoordinatorStatus,
        **_envelope(state=st.sampled_from(["online", "offline"])),
    ),
}

any_message = st.one_of(*STRATEGIES.values())


def topic_for(msg: Any, topics: Topics | None = None) -> str:
    """The topic ``msg`` travels on, found from the codec's own kind tables."""
    topics = topics or Topics()
    command = next((c for c, kinds in COMMAND_KINDS.items() if msg.kind in kinds), None)
    if command is not None:
        return topics.cmd(msg.site, command)
    channel = next(c for c, kinds in CHANNEL_KINDS.items() if msg.kind in kinds)
    return topics.build(
        ParsedTopic(
            channel,
            site=msg.site,
            device=msg.device
            if channel in (Channel.TELEMETRY, Channel.PREDICTION, Channel.ALARM)
            else None,
            job=getattr(msg, "job_id", None),
        )
    )


# One fixed, fully populated instance per kind, for tests that need a concrete message.
_HASH = "ab" * 32
SAMPLES: dict[str, Any] = {
    m.kind: m
    for m in (
        SiteStatus(site="plant-1", session=3, seq=7, state="online"),
        Registration(
            site="plant-1",
            session=3,
            seq=7,
            name="Detroit press line",
            hierarchy=PlantHierarchy(enterprise="acme", site="detroit", line="press-2"),
            location=Location(lat=42.33, lon=-83.05),
            labels={"owner": "maintenance"},
            telemetry=(
                TelemetryDevice(
                    device="press-1", source="system", sensors=(SensorSpec(name="t", unit="C"),)
                ),
            ),
            tasks=(TaskOffer(name="fd001_rul", code_hash=_HASH),),
            datasets=(DatasetSummary(name="fd001", rows=20631),),
        ),
        Heartbeat(site="plant-1", session=3, seq=7, interval_s=10, cpu_percent=12.5),
        TelemetryBatch(
            site="plant-1",
            session=3,
            seq=8,
            device="press-1",
            samples=(Sample(ts=1_700_000_000_000, name="temp", value=21.5, unit="C"),),
            gaps=(SeqRange(first=2, last=5),),
        ),
        Prediction(
            site="plant-1",
            session=3,
            seq=12,
            device="engine-7",
            model_version="r-1:5",
            task="cmapss_rul",
            window_end=1_700_000_000_000,
            outputs={"rul": PredictionOutput(value=87.5, unit="cycles")},
        ),
        Alarm(
            site="plant-1",
            session=3,
            seq=12,
            device="engine-7",
            alarm_id="rul_low",
            state="active",
            severity="critical",
            rule="rul < 30",
            value=24.0,
            model_version="r-1:5",
            since=1_700_000_000_000,
        ),
        JobStatus(site="plant-1", session=3, seq=9, job_id="j-1", state="running", progress=0.5),
        JobResult(
            site="plant-1",
            session=3,
            seq=10,
            job_id="j-1",
            n_samples=100,
            metrics={"rmse": 14.2},
            weights=WeightsBlob(size=4, sha256=_HASH, chunks=1),
        ),
        ResultChunk(
            site="plant-1",
            session=3,
            seq=11,
            job_id="j-1",
            index=0,
            total=1,
            sha256=_HASH,
            data="AAAA",
        ),
        Ack(site="plant-1", session=1, acked=11),
        TrainCommand(
            site="plant-1",
            session=1,
            cmd_id="c-1",
            expires_at=1_800_000_000_000,
            job_id="j-1",
            run_id="r-1",
            round=0,
            task="fd001_rul",
            code_hash=_HASH,
            hyperparams={"lr": 0.01, "epochs": 2},
        ),
        TrainChunk(
            site="plant-1", session=1, job_id="j-1", index=0, total=1, sha256=_HASH, data="AA"
        ),
        CancelCommand(
            site="plant-1", session=1, cmd_id="c-2", expires_at=1_800_000_000_000, job_id="j-1"
        ),
        DeployCommand(
            site="plant-1",
            session=1,
            cmd_id="c-5",
            expires_at=1_800_000_000_000,
            deployment_id="d-1",
            model_version="r-1-r5",
            task="cmapss-rul",
            code_hash=_HASH,
            weights=WeightsBlob(size=4, sha256=_HASH, chunks=1),
            cadence_s=5.0,
            rules=("rul < 30",),
        ),
        DeployChunk(
            site="plant-1", session=1, job_id="d-1", index=0, total=1, sha256=_HASH, data="AA"
        ),
        DeploymentStatus(
            site="plant-1",
            session=3,
            seq=13,
            deployment_id="d-1",
            model_version="r-1-r5",
            task="cmapss-rul",
            code_hash=_HASH,
            state="active",
            since=1_700_000_000_000,
            previous_version="r-1-r4",
            devices=("engine-7",),
            cadence_s=5.0,
            rules=("rul < 30",),
        ),
        RebirthCommand(site="plant-1", session=1, cmd_id="c-3", expires_at=1_800_000_000_000),
        PingCommand(site="plant-1", session=1, cmd_id="c-4", expires_at=1_800_000_000_000),
        CoordinatorStatus(session=1, state="online"),
    )
}


# -- tests -------------------------------------------------------------------------------


def test_strategies_and_samples_cover_every_kind() -> None:
    assert set(STRATEGIES) == set(ALL_MODELS)
    assert set(SAMPLES) == {m.model_fields["kind"].default for m in ALL_MODELS}


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_every_kind(model: type[BaseModel], data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[model])
    assert type(msg) is model
    assert decode(topic_for(msg), encode(msg)) == msg


@settings(max_examples=100, deadline=None)
@given(msg=any_message, prefix=prefixes)
def test_round_trip_under_any_prefix(msg: Any, prefix: str) -> None:
    topics = Topics(prefix)
    assert Codec(topics).decode(topic_for(msg, topics), encode(msg)) == msg


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_unknown_fields_in_a_later_minor_version_are_ignored(kind: str) -> None:
    msg = SAMPLES[kind]
    body = json.loads(encode(msg))
    body.update(v="1.7", added_in_1_7={"nested": [1, 2]}, another_new_field="x")
    got = decode(topic_for(msg), json.dumps(body).encode())
    assert got == msg.model_copy(update={"v": "1.7"})


@pytest.mark.parametrize("kind", ["site_status", "registration", "alarm", "coordinator_status"])
def test_empty_retained_payload_is_cleared(kind: str) -> None:
    topic = topic_for(SAMPLES[kind])
    got = decode(topic, b"")
    assert isinstance(got, Cleared)
    assert got.topic == Topics().parse(topic)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused_when_building(bad: float) -> None:
    # They would otherwise be encoded as JSON null and fail (or change) on decode.
    with pytest.raises(ValidationError):
        Heartbeat(site="s", session=1, interval_s=1, cpu_percent=bad)
    with pytest.raises(ValidationError):
        JobResult(site="s", session=1, seq=1, job_id="j", n_samples=1, metrics={"loss": bad})
    with pytest.raises(ValidationError):
        Sample(ts=0, name="t", value=bad)
    with pytest.raises(ValidationError):
        PredictionOutput(value=bad)
    with pytest.raises(ValidationError):
        Alarm(site="s", session=1, device="d", alarm_id="a", state="active", value=bad, since=0)


def test_prediction_bounds() -> None:
    base = SAMPLES["prediction"]
    topic = topic_for(base)
    body = json.loads(encode(base))
    for bad, why in (
        ({"outputs": {}}, "outputs"),
        ({"outputs": {f"o{i}": {"value": 1.0} for i in range(65)}}, "outputs"),
        ({"outputs": {"bad name!": {"value": 1.0}}}, "outputs"),
        ({"seq": 0}, "seq"),
        ({"seq": 2**63}, "seq"),
        ({"model_version": ""}, "model_version"),
        ({"window_end": -1}, "window_end"),
    ):
        with pytest.raises(DecodeError) as err:
            decode(topic, json.dumps({**body, **bad}).encode())
        assert why in err.value.detail
    nan = encode(base).replace(b"87.5", b"NaN")
    with pytest.raises(DecodeError):
        decode(topic, nan)
    # A prediction is durable (kept in the outbox, acked), an alarm retained, not durable.
    assert "prediction" in DURABLE_KINDS and "alarm" not in DURABLE_KINDS
    assert Channel.ALARM in RETAINED and Channel.PREDICTION not in RETAINED


def test_empty_payload_on_the_prediction_topic_is_refused() -> None:
    with pytest.raises(DecodeError) as err:
        decode(topic_for(SAMPLES["prediction"]), b"")
    assert err.value.reason is Reason.EMPTY
