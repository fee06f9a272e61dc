"""Build and parse every fedmq topic in one place.

Layout under a configurable prefix ``P`` (default ``fedmq/v1``)::

    P/site/{site}/status | registration | heartbeat | ack | deployment
    P/site/{site}/telemetry | prediction | alarm/{device}
    P/site/{site}/job/{job}/status | result
    P/site/{site}/cmd/{train|cancel|deploy|rebirth|ping}
    P/coordinator/status

Topic levels use only ``[A-Za-z0-9_-]`` so the same tree works on Mosquitto, NATS and
RabbitMQ; site ids match ``^[a-z0-9][a-z0-9_-]{0,63}$``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from schemas.errors import TopicError

__all__ = [
    "COMMANDS",
    "DEFAULT_PREFIX",
    "QOS",
    "RETAINED",
    "Channel",
    "ParsedTopic",
    "Topics",
    "validate_level",
    "validate_prefix",
    "validate_site_id",
]

DEFAULT_PREFIX = "fedmq/v1"
COMMANDS = ("train", "cancel", "deploy", "rebirth", "ping")

_SITE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_LEVEL_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class Channel(str, Enum):
    """What a topic carries; the codec checks a payload's kind against it."""

    STATUS = "status"
    REGISTRATION = "registration"
    HEARTBEAT = "heartbeat"
    TELEMETRY = "telemetry"
    PREDICTION = "prediction"
    ALARM = "alarm"
    DEPLOYMENT = "deployment"
    JOB_STATUS = "job_status"
    JOB_RESULT = "job_result"
    ACK = "ack"
    CMD = "cmd"
    COORDINATOR_STATUS = "coordinator_status"


# Delivery per channel (DESIGN.md topic table): the MQTT QoS, and which topics are
# retained (status and coordinator status are also the Last Will).
QOS: dict[Channel, int] = {c: 0 if c is Channel.HEARTBEAT else 1 for c in Channel}
RETAINED = frozenset(
    {Channel.STATUS, Channel.REGISTRATION, Channel.ALARM, Channel.COORDINATOR_STATUS}
)


def validate_site_id(site: str) -> str:
    """Return ``site`` if it is a valid site id, else raise TopicError."""
    if not isinstance(site, str) or not _SITE_RE.fullmatch(site):
        raise TopicError(f"invalid site id {site!r}: must match {_SITE_RE.pattern}")
    return site


def validate_level(value: str, what: str = "topic level") -> str:
    """Return ``value`` if it is one portable topic level, else raise TopicError."""
    if not isinstance(value, str) or not _LEVEL_RE.fullmatch(value):
        raise TopicError(f"invalid {what} {value!r}: use 1-128 of [A-Za-z0-9_-]")
    return value


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if every level is portable, else raise TopicError."""
    if not isinstance(prefix, str) or not prefix:
        raise TopicError("the topic prefix must not be empty")
    for level in prefix.split("/"):
        validate_level(level, "prefix level")
    return prefix


@dataclass(frozen=True)
class ParsedTopic:
    """A parsed fedmq topic. Fields that the channel does not use are None."""

    channel: Channel
    site: str | None = None
    device: str | None = None
    job: str | None = None
    command: str | None = None


_SITE_LEAVES = {
    "status": Channel.STATUS,
    "registration": Channel.REGISTRATION,
    "heartbeat": Channel.HEARTBEAT,
    "ack": Channel.ACK,
    "deployment": Channel.DEPLOYMENT,
}

# Per-device topics: P/site/{site}/<leaf>/{device}.
_DEVICE_LEAVES = {
    "telemetry": Channel.TELEMETRY,
    "prediction": Channel.PREDICTION,
    "alarm": Channel.ALARM,
}


@dataclass(frozen=True)
class Topics:
    """Topic builder and parser for one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)

    def _site(self, site: str, *levels: str) -> str:
        return "/".join((self.prefix, "site", validate_site_id(site), *levels))

    def status(self, site: str) -> str:
        return self._site(site, "status")

    def registration(self, site: str) -> str:
        return self._site(site, "registration")

    def heartbeat(self, site: str) -> str:
        return self._site(site, "heartbeat")

    def ack(self, site: str) -> str:
        return self._site(site, "ack")

    def telemetry(self, site: str, device: str) -> str:
        return self._site(site, "telemetry", validate_level(device, "device"))

    def prediction(self, site: str, device: str) -> str:
        return self._site(site, "prediction", validate_level(device, "device"))

    def alarm(self, site: str, device: str) -> str:
        return self._site(site, "alarm", validate_level(device, "device"))

    def deployment(self, site: str) -> str:
        return self._site(site, "deployment")

    def job_status(self, site: str, job: str) -> str:
        return self._site(site, "job", validate_level(job, "job id"), "status")

    def job_result(self, site: str, job: str) -> str:
        return self._site(site, "job", validate_level(job, "job id"), "result")

    def cmd(self, site: str, command: str) -> str:
        if command not in COMMANDS:
            raise TopicError(f"unknown command {command!r}: one of {', '.join(COMMANDS)}")
        return self._site(site, "cmd", command)

    def coordinator_status(self) -> str:
        return f"{self.prefix}/coordinator/status"

    # Subscriptions -------------------------------------------------------------------

    def all_sites(self) -> str:
        """Everything every site publishes (and what is sent to them): ``P/site/#``."""
        return f"{self.prefix}/site/#"

    def shared_telemetry(self, group: str) -> str:
        """Every site's telemetry, split among a group of coordinator instances by an MQTT
        shared subscription: ``$share/{group}/P/site/+/telemetry/+``."""
        return f"$share/{validate_level(group, 'group')}/{self.prefix}/site/+/telemetry/+"

    def all_but_telemetry(self) -> list[str]:
        """What sites publish besides telemetry (the leading coordinator instance's part)."""
        site = f"{self.prefix}/site/+"
        return [
            f"{site}/status", f"{site}/registration", f"{site}/heartbeat",
            f"{site}/deployment", f"{site}/prediction/+", f"{site}/alarm/+", f"{site}/job/#",
        ]  # fmt: skip

    def site_commands(self, site: str) -> str:
        return self._site(site, "cmd", "#")

    # Parsing -------------------------------------------------------------------------

    def parse(self, topic: str) -> ParsedTopic:
        """Parse a concrete topic under this prefix; raise TopicError otherwise."""
        if not isinstance(topic, str) or "+" in topic or "#" in topic:
            raise TopicError(f"not a concrete topic: {topic!r}")
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise TopicError(f"topic {topic!r} is not under prefix {self.prefix!r}")
        levels = topic[len(head) :].split("/")
        if levels == ["coordinator", "status"]:
            return ParsedTopic(Channel.COORDINATOR_STATUS)
        if len(levels) < 3 or levels[0] != "site":
            raise TopicError(f"unknown topic {topic!r}")
        site = validate_site_id(levels[1])
        rest = levels[2:]
        if len(rest) == 1 and rest[0] in _SITE_LEAVES:
            return ParsedTopic(_SITE_LEAVES[rest[0]], site=site)
        if len(rest) == 2 and rest[0] in _DEVICE_LEAVES:
            return ParsedTopic(
                _DEVICE_LEAVES[rest[0]], site=site, device=validate_level(rest[1], "device")
            )
        if len(rest) == 3 and rest[0] == "job" and rest[2] in ("status", "result"):
            channel = Channel.JOB_STATUS if rest[2] == "status" else Channel.JOB_RESULT
            return ParsedTopic(channel, site=site, job=validate_level(rest[1], "job id"))
        if len(rest) == 2 and rest[0] == "cmd" and rest[1] in COMMANDS:
            return ParsedTopic(Channel.CMD, site=site, command=rest[1])
        raise TopicError(f"unknown topic {topic!r}")

    def build(self, parsed: ParsedTopic) -> str:
        """Inverse of :meth:`parse`."""
        c, site = parsed.channel, parsed.site or ""
        if c is Channel.COORDINATOR_STATUS:
            return self.coordinator_status()
        if c in (Channel.TELEMETRY, Channel.PREDICTION, Channel.ALARM):
            return self._site(site, c.value, validate_level(parsed.device or "", "device"))
        if c is Channel.JOB_STATUS:
            return self.job_status(site, parsed.job or "")
        if c is Channel.JOB_RESULT:
            return self.job_result(site, parsed.job or "")
        if c is Channel.CMD:
            return self.cmd(site, parsed.command or "")
        return self._site(site, c.value)
