"""Generate JSON Schemas and an AsyncAPI 3.0 document from the wire models.

Everything here is derived from ``schemas``: the models (``ALL_MODELS``), the topic
builder (``Topics``), which kinds travel on which channel (``CHANNEL_KINDS``,
``COMMAND_KINDS``) and the delivery tables (``QOS``, ``RETAINED``), so the exported
contract cannot drift from what the codec accepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from fedmq_runtime.settings import MqttSettings
from schemas import (
    ALL_MODELS,
    DEFAULT_PREFIX,
    DURABLE_KINDS,
    QOS,
    RETAINED,
    SCHEMA_VERSION,
    Channel,
    ParsedTopic,
    Topics,
)
from schemas.messages import CHANNEL_KINDS, COMMAND_KINDS, MESSAGE_ADAPTER

__all__ = [
    "ASYNCAPI_FILE",
    "JSON_SCHEMA_DIALECT",
    "UNION_FILE",
    "ChannelSpec",
    "asyncapi_document",
    "channel_specs",
    "export",
    "kind_of",
    "kind_schema",
    "union_schema",
]

ASYNCAPI_FILE = "asyncapi.json"
UNION_FILE = "message.schema.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_MQTT_BINDING = "0.2.0"

# Valid topic levels that stand in for the AsyncAPI parameters while the real topic
# builder runs; they are replaced by ``{siteId}`` etc. afterwards.
_STAND_INS = {"0siteid0": "siteId", "0device0": "device", "0jobid0": "jobId"}
_SITE, _DEVICE, _JOB = _STAND_INS
_PARAM_TEXT = {
    "siteId": "Site id, matching ^[a-z0-9][a-z0-9_-]{0,63}$.",
    "device": "Device id: one topic level of 1-128 characters from [A-Za-z0-9_-].",
    "jobId": "Training job id: one topic level of 1-128 characters from [A-Za-z0-9_-].",
}
# Channels the coordinator writes; every other channel is written by a site.
_FROM_COORDINATOR = frozenset({Channel.ACK, Channel.CMD, Channel.COORDINATOR_STATUS})
# The retained status topics double as the Last Will of the connection that owns them.
_LAST_WILL = {
    Channel.STATUS: "a site_status payload with state 'offline' and the connection's session",
    Channel.COORDINATOR_STATUS: "a coordinator_status payload with state 'offline'",
}


def kind_of(model: type[BaseModel]) -> str:
    """The ``kind`` discriminator value of a message model."""
    return str(model.model_fields["kind"].default)


def _require_kind(schema: dict[str, Any]) -> dict[str, Any]:
    # ``kind`` has a default in Python, but on the wire it is the discriminator: a
    # payload without it is rejected, so the exported contract requires it.
    required = schema.setdefault("required", [])
    if "kind" not in required:
        required.insert(0, "kind")
    return schema


def kind_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A self-contained JSON Schema (draft 2020-12) for one message kind.

    Validation mode: the schema describes what the decoder accepts, which every
    encoded message satisfies.
    """
    schema = _require_kind(model.model_json_schema(mode="validation"))
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def union_schema() -> dict[str, Any]:
    """One JSON Schema that accepts any fedmq message (``oneOf`` by ``kind``)."""
    schema = MESSAGE_ADAPTER.json_schema(mode="validation")
    for sub in schema.get("$defs", {}).values():
        if "kind" in sub.get("properties", {}):
            _require_kind(sub)
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "FedmqMessage", **schema}


@dataclass(frozen=True)
class ChannelSpec:
    """One topic of the topic table, with the parameters named as in AsyncAPI."""

    name: str
    address: str
    channel: Channel
    kinds: tuple[str, ...]
    parameters: tuple[str, ...]
    qos: int
    retain: bool
    durable: bool
    sender: str
    last_will: str | None


def _camel(levels: list[str]) -> str:
    return levels[0] + "".join(level[:1].upper() + level[1:] for level in levels[1:])


def channel_specs(prefix: str = DEFAULT_PREFIX) -> list[ChannelSpec]:
    """Every topic fedmq uses under ``prefix``, built by :class:`schemas.Topics`."""
    topics = Topics(prefix)
    specs = []
    for channel in Channel:
        commands: list[str | None] = [*COMMAND_KINDS] if channel is Channel.CMD else [None]
        for command in commands:
            wanted = ParsedTopic(channel, site=_SITE, device=_DEVICE, job=_JOB, command=command)
            concrete = topics.build(wanted)
            parsed = topics.parse(concrete)  # guards the stand-ins against the parser
            address = concrete
            for stand_in, param in _STAND_INS.items():
                address = address.replace(stand_in, "{" + param + "}")
            kinds = COMMAND_KINDS[command] if command else CHANNEL_KINDS[parsed.channel]
            specs.append(
                ChannelSpec(
                    # "site/{siteId}/job/{jobId}/status" -> "siteJobStatus"
                    name=_camel([x for x in address[len(prefix) + 1 :].split("/") if "{" not in x]),
                    address=address,
                    channel=channel,
                    kinds=tuple(sorted(kinds)),
                    parameters=tuple(p for s, p in _STAND_INS.items() if s in concrete),
                    qos=QOS[channel],
                    retain=channel in RETAINED,
                    durable=bool(kinds & DURABLE_KINDS),
                    sender="coordinator" if channel in _FROM_COORDINATOR else "site",
                    last_will=_LAST_WILL.get(channel),
                )
            )
    return specs


def _server(role: str, spec: ChannelSpec) -> dict[str, Any]:
    defaults = MqttSettings()
    return {
        "host": f"{defaults.host}:{defaults.port}",
        "protocol": "mqtt",
        "protocolVersion": "5",
        "description": f"The broker as a {role} connects to it (MQTT 3.1.1 works too).",
        "bindings": {
            "mqtt": {
                "cleanSession": False,
                "keepAlive": defaults.keepalive,
                "lastWill": {
                    "topic": spec.address,
                    "qos": spec.qos,
                    "retain": spec.retain,
                    "message": spec.last_will,
                },
                "bindingVersion": _MQTT_BINDING,
            }
        },
    }


def asyncapi_document(prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """An AsyncAPI 3.0 document of every fedmq topic, as seen by a site node."""
    specs = channel_specs(prefix)
    by_model = {kind_of(m): m for m in ALL_MODELS}
    refs, defs = models_json_schema(
        [(m, "validation") for m in ALL_MODELS], ref_template="#/components/schemas/{model}"
    )
    schemas = defs.get("$defs", {})
    for model in ALL_MODELS:
        _require_kind(schemas[model.__name__])
    messages = {
        kind: {
            "name": kind,
            "title": model.__name__,
            "summary": (model.__doc__ or kind).strip().splitlines()[0],
            "contentType": "application/json",
            "payload": refs[(model, "validation")],
        }
        for kind, model in sorted(by_model.items())
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in specs:
        channels[spec.name] = {
            "address": spec.address,
            "description": (
                f"Written by the {spec.sender}; QoS {spec.qos}"
                + (", retained" if spec.retain else "")
                + (", durable in the site outbox until acked" if spec.durable else "")
                + (", also the Last Will" if spec.last_will else "")
                + "."
            ),
            "parameters": {p: {"description": _PARAM_TEXT[p]} for p in spec.parameters},
            "messages": {k: {"$ref": f"#/components/messages/{k}"} for k in spec.kinds},
            "x-fedmq-durable": spec.durable,
            "x-fedmq-last-will": spec.last_will is not None,
        }
        action = "send" if spec.sender == "site" else "receive"
        operations[_camel([action, spec.name])] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{spec.name}"},
            "messages": [{"$ref": f"#/channels/{spec.name}/messages/{k}"} for k in spec.kinds],
            "bindings": {
                "mqtt": {"qos": spec.qos, "retain": spec.retain, "bindingVersion": _MQTT_BINDING}
            },
        }
    wills = {s.channel: s for s in specs if s.last_will}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "fedmq",
            "version": SCHEMA_VERSION,
            "description": (
                "Federated predictive maintenance over MQTT. Operations are described from a "
                "site node's point of view: it sends what sites publish and receives what the "
                f"coordinator publishes. Topic prefix: {prefix}. Every payload is UTF-8 JSON; "
                "an empty retained payload on status or registration deregisters the site."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "site": _server("site node", wills[Channel.STATUS]),
            "coordinator": _server("coordinator", wills[Channel.COORDINATOR_STATUS]),
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def _write_json(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def export(directory: Path, prefix: str = DEFAULT_PREFIX) -> list[Path]:
    """Write ``<kind>.schema.json`` per kind, ``message.schema.json`` and the AsyncAPI file.

    Raises:
        NotADirectoryError: ``directory`` is missing or not a directory.
        OSError: a file could not be written.
        TopicError: ``prefix`` is not a valid topic prefix.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not an existing directory")
    document = asyncapi_document(prefix)
    written = [
        _write_json(directory / f"{kind_of(m)}.schema.json", kind_schema(m)) for m in ALL_MODELS
    ]
    written.append(_write_json(directory / UNION_FILE, union_schema()))
    written.append(_write_json(directory / ASYNCAPI_FILE, document))
    return written
