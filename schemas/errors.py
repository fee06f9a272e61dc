"""Errors raised by the schemas package.

Exception tree::

    SchemaError
    ├── TopicError      a topic or prefix that fedmq cannot build or parse
    └── DecodeError     an inbound payload rejected by the codec (carries ``reason``)

Callers that receive network input catch ``DecodeError`` only: the codec translates every
failure (bad topic, UTF-8, JSON, version, kind, site, size, validation) into it.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["DecodeError", "Reason", "SchemaError", "TopicError"]


class Reason(str, Enum):
    """Why a payload was rejected; stored with dead letters."""

    BAD_TOPIC = "bad_topic"
    TOO_LARGE = "too_large"
    EMPTY = "empty"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_KIND = "unknown_kind"
    WRONG_TOPIC = "wrong_topic"
    SITE_MISMATCH = "site_mismatch"
    INVALID = "invalid"


class SchemaError(Exception):
    """Base class of every error raised by ``schemas``."""


class TopicError(SchemaError, ValueError):
    """A topic, prefix, site id or topic level is not valid."""


class DecodeError(SchemaError):
    """An inbound payload was rejected.

    Attributes:
        reason: the machine-readable cause.
        detail: one human-readable line.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
