"""Which MQTT version a client speaks, and ``protocol = "auto"`` (paho-free on purpose).

``auto`` (the default) tries MQTT 5 first and falls back to 3.1.1 when the broker refuses
MQTT 5: a CONNACK "unsupported protocol version" (nats-server), or a connection closed
before any CONNACK (RabbitMQ before 3.13 closes on an MQTT 5 CONNECT). The first CONNACK
settles the choice for the life of the process (a restart probes again), and it is logged
once: ``MQTT 5 (protocol auto)`` or ``MQTT 3.1.1 (protocol auto: ...)``. When both
versions are closed before CONNACK (not an MQTT broker, a proxy that drops us), auto goes
back to MQTT 5 for the next attempt, so it keeps trying both.

Each bus module (the only modules that import paho) asks :attr:`ProtocolChoice.current`
before each connection attempt and reports what the broker did; the reason of every
refused or dropped connect is logged here, with a hint when an explicit ``"5"`` meets a
broker that seems not to speak it.
"""

from __future__ import annotations

import logging
from typing import Literal

__all__ = ["UNSUPPORTED_PROTOCOL", "ProtocolChoice", "Version"]

Version = Literal["5", "3.1.1"]
# MQTT 5 reason code 0x84; paho reports a 3.1.1 CONNACK return code 1 with the same value.
UNSUPPORTED_PROTOCOL = 0x84


class ProtocolChoice:
    """The protocol to try next, from the setting and what the broker answered so far."""

    def __init__(self, setting: str, where: str, logger: logging.Logger) -> None:
        if setting not in ("auto", "5", "3.1.1"):
            raise ValueError(f"unknown MQTT protocol {setting!r} (auto, 5 or 3.1.1)")
        self.setting = setting
        self.where = where
        self.log = logger
        self.current: Version = "3.1.1" if setting == "3.1.1" else "5"
        self.settled = setting != "auto"

    @property
    def auto(self) -> bool:
        return self.setting == "auto"

    def label(self) -> str:
        """``MQTT 5`` / ``MQTT 3.1.1``, with ``(protocol auto)`` when chosen by auto."""
        return f"MQTT {self.current}" + (" (protocol auto)" if self.auto else "")

    def connack(self, reason_value: int, reason: str) -> bool:
        """A CONNACK arrived; True when the next attempt should follow at once (fallback).

        ``reason_value`` is the MQTT 5 reason code (0 = success); the refusal is logged by
        the caller's own connect log, this only decides and logs the protocol choice.
        """
        if reason_value == UNSUPPORTED_PROTOCOL and self.auto and self.current == "5":
            self.log.warning(
                "broker %s refused MQTT 5 (CONNACK: %s); falling back to MQTT 3.1.1",
                self.where,
                reason,
            )
            self.current = "3.1.1"
            return True
        if not self.settled:
            self.settled = True
            if self.current == "5":
                self.log.info("broker %s speaks MQTT 5: using it (protocol auto)", self.where)
            else:
                self.log.warning(
                    "broker %s does not speak MQTT 5: using MQTT 3.1.1 (protocol auto); "
                    "without MQTT 5 the session expiry and per-message reason codes are lost",
                    self.where,
                )
        return False

    def closed_before_connack(self, reason: str) -> bool:
        """The broker closed the connection before any CONNACK; True to retry at once."""
        self.log.warning(
            "broker %s closed the connection before CONNACK (%s, %s)",
            self.where,
            f"MQTT {self.current}",
            reason,
        )
        if self.settled:
            if self.setting == "5":
                self.log.warning(
                    'the broker may not speak MQTT 5: set mqtt.protocol = "auto" or "3.1.1"'
                )
            return False
        if self.current == "5":
            self.log.warning("trying MQTT 3.1.1 with broker %s (protocol auto)", self.where)
            self.current = "3.1.1"
            return True
        self.current = "5"  # neither answered: keep trying both
        return False
