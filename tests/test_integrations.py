"""The consumer examples of docs/integrations (Node-RED flow, Telegraf config, the
mosquitto_sub line) read only what fedmq sends (issue 17, item 6).

A real ``fedmq-site run`` publishes telemetry to a real Mosquitto; that message is checked
against the JSON Schemas exported by the real ``fedmq schema export``, every field the
examples read is checked against those schemas, the Node-RED function is run on the real
message with Node.js (when installed) and the documented mosquitto_sub line is run.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest

from tests.helpers.broker import Broker
from tests.helpers.coord_proc import fedmq
from tests.helpers.mqtt import TestClient
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
FLOW = DOCS / "integrations" / "node-red-flow.json"
TELEGRAF = DOCS / "integrations" / "telegraf.conf"
EXAMPLE_PREFIX = "fedmq/v1"


@pytest.fixture
def schemas(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """kind -> exported JSON Schema, from the real `fedmq schema export`."""
    out = tmp_path / "schemas"
    fedmq("schema", "export", str(out))
    return {
        p.name.removesuffix(".schema.json"): json.loads(p.read_text())
        for p in out.glob("*.schema.json")
    }


@pytest.fixture
def telemetry(
    broker: Broker, prefix: str, tmp_path: Path, make_site: Callable[..., SiteProc]
) -> tuple[str, str, dict[str, Any]]:
    """(prefix, topic, payload) of a real telemetry message from a real site."""
    data = tmp_path / "press.csv"
    data.write_text("".join(f"{1.5 + i},{'nan' if i % 2 else 20 + i}\n" for i in range(200)))
    device = {
        "name": "press",
        "source": "file",
        "path": str(data),
        "format": "csv",
        "columns": [{"name": "pressure", "unit": "bar"}, {"name": "temp", "unit": "C"}],
        "rate_hz": 50.0,
    }
    watcher = TestClient(broker.port).connect()
    try:
        watcher.subscribe(f"{prefix}/site/+/telemetry/+")
        make_site(broker.port, prefix, site_id="plant-int", devices=[device])
        msg = watcher.expect(lambda m: "/telemetry/" in m.topic, timeout=60)
    finally:
        watcher.close()
    return prefix, msg.topic, json.loads(msg.payload)


def _props(schema: dict[str, Any], ref: str | None = None) -> set[str]:
    node = schema if ref is None else schema["$defs"][ref]
    return set(node["properties"])


def _matches(filter_: str, prefix: str, topic: str) -> bool:
    return mqtt.topic_matches_sub(filter_.replace(EXAMPLE_PREFIX, prefix, 1), topic)


def _flow() -> list[dict[str, Any]]:
    return list(json.loads(FLOW.read_text()))


def _function_for(topic_part: str) -> dict[str, Any]:
    nodes = {n["id"]: n for n in _flow()}
    source = next(n for n in nodes.values() if n["type"] == "mqtt in" and topic_part in n["topic"])
    (target,) = source["wires"][0]
    assert nodes[target]["type"] == "function"
    return nodes[target]


def _reads(code: str, var: str) -> set[str]:
    return set(re.findall(rf"\b{var}\.(\w+)", code)) - {"map", "length"}


def test_real_telemetry_validates_against_the_exported_schema(
    schemas: dict[str, dict[str, Any]], telemetry: tuple[str, str, dict[str, Any]]
) -> None:
    _prefix, topic, payload = telemetry
    jsonschema.validate(payload, schemas["telemetry"])
    assert payload["kind"] == "telemetry" and topic.endswith(f"/telemetry/{payload['device']}")
    # The check can fail: a sample without its value is refused.
    broken = json.loads(json.dumps(payload))
    del broken["samples"][0]["value"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schemas["telemetry"])


def test_node_red_flow_reads_only_schema_fields(
    schemas: dict[str, dict[str, Any]], telemetry: tuple[str, str, dict[str, Any]]
) -> None:
    prefix, topic, _payload = telemetry
    flow = _flow()
    mqtt_in = [n for n in flow if n["type"] == "mqtt in"]
    assert any(_matches(n["topic"], prefix, topic) for n in mqtt_in)
    code = _function_for("/telemetry/")["func"]
    assert _reads(code, "batch") <= _props(schemas["telemetry"])
    assert _reads(code, "sample") <= _props(schemas["telemetry"], "Sample")
    assert {"samples", "site", "device", "historical"} <= _reads(code, "batch")
    assert {"name", "value", "unit", "q", "ts"} <= _reads(code, "sample")


def test_node_red_telemetry_function_turns_a_real_batch_into_rows(
    telemetry: tuple[str, str, dict[str, Any]], tmp_path: Path
) -> None:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("Node.js not installed: the flow's fields are still checked above")
    _prefix, topic, payload = telemetry
    fn = _function_for("/telemetry/")
    script = tmp_path / "run.js"
    script.write_text(
        "const msg = " + json.dumps({"topic": topic, "payload": payload}) + ";\n"
        "const fail = (m) => { throw new Error(m); };\n"
        "const node = {warn: fail, error: fail};\n"
        "const out = (function (msg, node) {\n" + fn["func"] + "\n})(msg, node);\n"
        "process.stdout.write(JSON.stringify(out));\n"
    )
    run = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    (rows,) = json.loads(run.stdout)
    assert len(rows) == len(payload["samples"])
    for row, sample in zip(rows, payload["samples"], strict=True):
        r = row["payload"]
        assert (r["site"], r["device"], r["name"], r["value"], r["unit"], r["quality"]) == (
            payload["site"], payload["device"], sample["name"], sample["value"],
            sample["unit"], sample["q"],
        )  # fmt: skip
        assert r["ts"] == sample["ts"] and r["time"].endswith("Z")
    assert {r["payload"]["quality"] for r in rows} == {"good", "bad"}  # nan -> q=bad
    csv = next(n for n in _flow() if n["type"] == "csv")
    assert set(csv["temp"].split(",")) <= set(rows[0]["payload"])


def test_telegraf_config_reads_only_schema_fields(
    schemas: dict[str, dict[str, Any]], telemetry: tuple[str, str, dict[str, Any]]
) -> None:
    prefix, topic, payload = telemetry
    consumers = tomllib.loads(TELEGRAF.read_text())["inputs"]["mqtt_consumer"]
    tel = next(c for c in consumers if any("/telemetry/" in t for t in c["topics"]))
    assert all(_matches(t, prefix, topic) for t in tel["topics"])
    assert tel["qos"] == 1 and tel["data_format"] == "json_v2"
    # Topic parsing: the tags name the site and device levels of the real topic.
    (parsing,) = tel["topic_parsing"]
    assert _matches(parsing["topic"], prefix, topic)
    # (One "_" per prefix level: the test's prefix is longer than fedmq/v1, as a plant's
    # acme/detroit/pdm/fedmq/v1 would be; the config's comment says so.)
    extra = len(prefix.split("/")) - len(EXAMPLE_PREFIX.split("/"))
    tags = "_/" * extra + parsing["tags"]
    levels = dict(zip(tags.split("/"), topic.split("/"), strict=True))
    assert (levels["site"], levels["device"]) == (payload["site"], payload["device"])
    (v2,) = tel["json_v2"]
    (obj,) = v2["object"]
    assert obj["path"] in _props(schemas["telemetry"])
    sample_props = _props(schemas["telemetry"], "Sample")
    read = {obj["timestamp_key"], *obj["tags"], *obj["fields"]}
    assert read <= sample_props, read - sample_props
    assert obj["timestamp_format"] == "unix_ms"  # Sample.ts is epoch milliseconds
    # On the real message: the path is an array of objects holding every key read.
    assert all(read <= set(s) for s in payload[obj["path"]])
    # Each consumer has its own account and client id (ids are bound to usernames).
    assert len({c["username"] for c in consumers}) == len(consumers)
    assert all(c["client_id"] == c["username"] for c in consumers)


def test_alarm_readers_match_the_alarm_schema(schemas: dict[str, dict[str, Any]]) -> None:
    # The Node-RED function and the Telegraf consumer read only fields the exported alarm
    # schema has (and the Node-RED one reads every field a row shows).
    props = _props(schemas["alarm"])
    code = _function_for("/alarm/")["func"]
    assert _reads(code, "alarm") <= props, _reads(code, "alarm") - props
    assert {"state", "severity", "rule", "value", "model_version", "since"} <= _reads(code, "alarm")
    consumers = tomllib.loads(TELEGRAF.read_text())["inputs"]["mqtt_consumer"]
    alarm = next(c for c in consumers if any("/alarm/" in t for t in c["topics"]))
    (obj,) = alarm["json_v2"][0]["object"]
    read = {obj["timestamp_key"], *obj["tags"], *obj["fields"], *obj["included_keys"]}
    assert read <= props, read - props


def _watch_line() -> str:
    text = (DOCS / "integrations.md").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("mosquitto_sub ")]
    assert lines, "docs/integrations.md lost its mosquitto_sub line"
    return lines[0]


def test_the_documented_mosquitto_sub_line_shows_fedmq_traffic(
    broker: Broker, telemetry: tuple[str, str, dict[str, Any]]
) -> None:
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        pytest.skip("mosquitto_sub not installed (apt-get install mosquitto-clients)")
    prefix, _topic, _payload = telemetry
    args = shlex.split(_watch_line())
    assert args[0] == "mosquitto_sub" and "-v" in args
    out: list[str] = []
    for i, arg in enumerate(args):
        prev = args[i - 1] if i else ""
        if prev == "-h":
            arg = "127.0.0.1"
        elif prev == "-p":
            arg = str(broker.port)
        elif prev == "-t":
            arg = arg.replace(EXAMPLE_PREFIX, prefix, 1)
        elif prev in ("--cafile", "--capath") or arg in ("--cafile", "--capath"):
            continue
        out.append(arg)
    out = [binary, *out[1:], "-C", "3", "-W", "60"]
    run = subprocess.run(out, capture_output=True, text=True, timeout=90,
                         env={"FEDMQ_READER_PASSWORD": "unused-on-the-dev-broker"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    topics = [line.split(" ", 1)[0] for line in run.stdout.splitlines() if line]
    assert topics and all(t.startswith(f"{prefix}/") for t in topics)
    assert any("/telemetry/" in t for t in topics)
