"""Topic build/parse round trips for every channel, and what the builder refuses."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Channel, ParsedTopic, TopicError, Topics, validate_site_id
from schemas.topics import COMMANDS, validate_level, validate_prefix
from tests.test_schemas_messages import levels, prefixes, site_ids


@st.composite
def parsed_topics(draw: st.DrawFn) -> ParsedTopic:
    channel = draw(st.sampled_from(list(Channel)))
    if channel is Channel.COORDINATOR_STATUS:
        return ParsedTopic(channel)
    return ParsedTopic(
        channel,
        site=draw(site_ids),
        device=draw(levels)
        if channel in (Channel.TELEMETRY, Channel.PREDICTION, Channel.ALARM)
        else None,
        job=draw(levels) if channel in (Channel.JOB_STATUS, Channel.JOB_RESULT) else None,
        command=draw(st.sampled_from(COMMANDS)) if channel is Channel.CMD else None,
    )


@settings(max_examples=200, deadline=None)
@given(parsed=parsed_topics(), prefix=prefixes)
def test_build_then_parse_is_identity(parsed: ParsedTopic, prefix: str) -> None:
    topics = Topics(prefix)
    topic = topics.build(parsed)
    assert topic.startswith(prefix + "/")
    assert "+" not in topic and "#" not in topic
    assert topics.parse(topic) == parsed
    assert topics.build(topics.parse(topic)) == topic


def test_every_builder_matches_the_design_table() -> None:
    t = Topics("acme/detroit/pdm/fedmq/v1")
    p = "acme/detroit/pdm/fedmq/v1"
    assert t.status("s1") == f"{p}/site/s1/status"
    assert t.registration("s1") == f"{p}/site/s1/registration"
    assert t.heartbeat("s1") == f"{p}/site/s1/heartbeat"
    assert t.telemetry("s1", "press-1") == f"{p}/site/s1/telemetry/press-1"
    assert t.prediction("s1", "press-1") == f"{p}/site/s1/prediction/press-1"
    assert t.alarm("s1", "press-1") == f"{p}/site/s1/alarm/press-1"
    assert t.job_status("s1", "j1") == f"{p}/site/s1/job/j1/status"
    assert t.job_result("s1", "j1") == f"{p}/site/s1/job/j1/result"
    assert t.ack("s1") == f"{p}/site/s1/ack"
    assert [t.cmd("s1", c) for c in COMMANDS] == [f"{p}/site/s1/cmd/{c}" for c in COMMANDS]
    assert t.coordinator_status() == f"{p}/coordinator/status"
    assert t.all_sites() == f"{p}/site/#"
    assert t.site_commands("s1") == f"{p}/site/s1/cmd/#"
    assert Topics().status("s1") == "fedmq/v1/site/s1/status"


@settings(max_examples=100, deadline=None)
@given(site=site_ids)
def test_valid_site_ids_are_accepted(site: str) -> None:
    assert validate_site_id(site) == site


BAD_SITES = ["", "A", "Site", "-a", "_a", "a.b", "a b", "a/b", "a+", "a#", "a" * 65, "é", "a\n"]
BAD_LEVELS = ["", "a.b", "a b", "a/b", "+", "#", "x" * 129, "ü", "a\n", "\x00"]
BAD_PREFIXES = ["", "/", "a/", "/a", "a//b", "a/+/b", "a/#", "a.b/v1", "acme corp/v1", "v1\n"]


@pytest.mark.parametrize("site", BAD_SITES)
def test_invalid_site_ids_raise(site: str) -> None:
    with pytest.raises(TopicError):
        validate_site_id(site)
    with pytest.raises(TopicError):
        Topics().status(site)
    with pytest.raises(TopicError):
        Topics().parse(f"fedmq/v1/site/{site}/status")


@pytest.mark.parametrize("level", BAD_LEVELS)
def test_invalid_devices_and_job_ids_raise(level: str) -> None:
    with pytest.raises(TopicError):
        validate_level(level)
    with pytest.raises(TopicError):
        Topics().telemetry("s1", level)
    with pytest.raises(TopicError):
        Topics().job_result("s1", level)


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_invalid_prefixes_raise(prefix: str) -> None:
    with pytest.raises(TopicError):
        validate_prefix(prefix)
    with pytest.raises(TopicError):
        Topics(prefix)


@settings(max_examples=100, deadline=None)
@given(site=st.text(max_size=70).filter(lambda s: not _is_site_id(s)))
def test_random_non_site_ids_raise(site: str) -> None:
    with pytest.raises(TopicError):
        validate_site_id(site)


def _is_site_id(text: str) -> bool:
    return re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", text) is not None


@pytest.mark.parametrize(
    "topic",
    [
        "fedmq/v1/site/+/status",
        "fedmq/v1/site/#",
        "fedmq/v1/site/s1/telemetry/+",
        "other/v1/site/s1/status",
        "fedmq/v2/site/s1/status",
        "fedmq/v1",
        "fedmq/v1/",
        "fedmq/v1/site/s1",
        "fedmq/v1/site/s1/unknown",
        "fedmq/v1/site/s1/status/extra",
        "fedmq/v1/site/s1/telemetry",
        "fedmq/v1/site/s1/telemetry/a/b",
        "fedmq/v1/site/s1/prediction",
        "fedmq/v1/site/s1/prediction/a/b",
        "fedmq/v1/site/s1/alarm",
        "fedmq/v1/site/s1/alarm/a.b",
        "fedmq/v1/site/s1/job/j1",
        "fedmq/v1/site/s1/job/j1/other",
        "fedmq/v1/site/s1/cmd/shutdown",
        "fedmq/v1/site/s1/cmd",
        "fedmq/v1/coordinator/other",
        "fedmq/v1/coordinator/status/x",
        "fedmq/v1/sites/s1/status",
    ],
)
def test_parse_rejects_wildcards_foreign_and_unknown_topics(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics().parse(topic)


def test_cmd_rejects_unknown_command() -> None:
    with pytest.raises(TopicError):
        Topics().cmd("s1", "shutdown")
