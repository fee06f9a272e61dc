"""Schema versions: the major version lives in the topic prefix, the minor in payloads."""

from __future__ import annotations

MAJOR = 1
MINOR = 1
SCHEMA_VERSION = f"{MAJOR}.{MINOR}"

__all__ = ["MAJOR", "MINOR", "SCHEMA_VERSION", "major_of"]


def major_of(version: str) -> int | None:
    """Return the major number of a ``"M.m"`` version string, or None if malformed."""
    head, sep, tail = version.partition(".")
    if not sep or not head.isdigit() or not tail.isdigit():
        return None
    return int(head)
