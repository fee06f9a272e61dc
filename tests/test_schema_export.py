"""``fedmq schema export``: JSON Schemas that validate real messages, and the AsyncAPI file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.admin.schema_export import (
    ASYNCAPI_FILE,
    UNION_FILE,
    asyncapi_document,
    channel_specs,
    export,
    kind_of,
    kind_schema,
    union_schema,
)
from coordinator.cli import EXIT, cli
from schemas import ALL_MODELS, DEFAULT_PREFIX, QOS, RETAINED, Channel, Topics, encode
from schemas.messages import COMMAND_KINDS
from tests.test_schemas_messages import SAMPLES, STRATEGIES

REPO = Path(__file__).resolve().parents[1]
VALIDATORS = {kind_of(m): jsonschema.Draft202012Validator(kind_schema(m)) for m in ALL_MODELS}
UNION = jsonschema.Draft202012Validator(union_schema())


def test_schemas_are_valid_draft_2020_12() -> None:
    for m in ALL_MODELS:
        jsonschema.Draft202012Validator.check_schema(kind_schema(m))
    jsonschema.Draft202012Validator.check_schema(union_schema())


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_exported_schema_validates_encoded_messages(model: Any, data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[model])
    payload = json.loads(encode(msg))
    VALIDATORS[msg.kind].validate(payload)
    UNION.validate(payload)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_exported_schema_rejects_what_the_codec_rejects(kind: str) -> None:
    payload = json.loads(encode(SAMPLES[kind]))
    validator = VALIDATORS[kind]
    assert validator.is_valid(payload)
    for broken in (
        {**payload, "kind": "nonsense"},
        {k: v for k, v in payload.items() if k != "kind"},
        {**payload, "site": "Not A Site"},
        {**payload, "session": -1},
        {**payload, "ts": "yesterday"},
    ):
        assert not validator.is_valid(broken)
        assert not UNION.is_valid(broken)
    # A kind validates only against its own schema.
    others = [k for k in VALIDATORS if k != kind]
    assert not any(VALIDATORS[k].is_valid(payload) for k in others)


def test_asyncapi_lists_every_channel_with_its_delivery() -> None:
    doc = asyncapi_document()
    assert doc["asyncapi"].startswith("3.0")
    addresses = {c["address"]: name for name, c in doc["channels"].items()}
    p = DEFAULT_PREFIX
    expected = {
        f"{p}/site/{{siteId}}/status",
        f"{p}/site/{{siteId}}/registration",
        f"{p}/site/{{siteId}}/heartbeat",
        f"{p}/site/{{siteId}}/telemetry/{{device}}",
        f"{p}/site/{{siteId}}/prediction/{{device}}",
        f"{p}/site/{{siteId}}/alarm/{{device}}",
        f"{p}/site/{{siteId}}/deployment",
        f"{p}/site/{{siteId}}/job/{{jobId}}/status",
        f"{p}/site/{{siteId}}/job/{{jobId}}/result",
        f"{p}/site/{{siteId}}/ack",
        *(f"{p}/site/{{siteId}}/cmd/{c}" for c in COMMAND_KINDS),
        f"{p}/coordinator/status",
    }
    assert set(addresses) == expected
    ops = {op["channel"]["$ref"].split("/")[-1]: op for op in doc["operations"].values()}
    assert set(ops) == set(doc["channels"])
    topics = Topics()
    for address, name in addresses.items():
        channel = doc["channels"][name]
        params = {part[1:-1] for part in address.split("/") if part.startswith("{")}
        assert set(channel["parameters"]) == params
        concrete = address.format(siteId="s1", device="d1", jobId="j1")
        kind = topics.parse(concrete).channel
        binding = ops[name]["bindings"]["mqtt"]
        assert binding["qos"] == QOS[kind] and binding["retain"] == (kind in RETAINED)
        # Every message a channel lists resolves to a component with a schema.
        for ref in channel["messages"].values():
            message = doc["components"]["messages"][ref["$ref"].split("/")[-1]]
            schema_name = message["payload"]["$ref"].split("/")[-1]
            assert schema_name in doc["components"]["schemas"]
    assert {m for c in doc["channels"].values() for m in c["messages"]} == set(VALIDATORS)
    heartbeat = ops[addresses[f"{p}/site/{{siteId}}/heartbeat"]]["bindings"]["mqtt"]
    assert heartbeat["qos"] == 0 and heartbeat["retain"] is False


def test_asyncapi_last_wills_are_the_status_topics() -> None:
    doc = asyncapi_document("acme/pdm/fedmq/v1")
    wills = {s["bindings"]["mqtt"]["lastWill"]["topic"]: s for s in doc["servers"].values()}
    assert set(wills) == {
        "acme/pdm/fedmq/v1/site/{siteId}/status",
        "acme/pdm/fedmq/v1/coordinator/status",
    }
    for server in doc["servers"].values():
        will = server["bindings"]["mqtt"]["lastWill"]
        assert will["qos"] == 1 and will["retain"] is True
    flagged = {s.channel for s in channel_specs() if s.last_will}
    assert flagged == {Channel.STATUS, Channel.COORDINATOR_STATUS}


def test_asyncapi_component_schemas_validate_messages() -> None:
    doc = asyncapi_document()
    registry_doc = {"components": doc["components"]}
    for kind, msg in SAMPLES.items():
        ref = doc["components"]["messages"][kind]["payload"]["$ref"]
        schema = {"$ref": ref, **registry_doc}
        jsonschema.Draft202012Validator(schema).validate(json.loads(encode(msg)))


def _check_export_dir(out: Path, printed: str) -> None:
    files = {p.name for p in out.iterdir()}
    kinds = {kind_of(m) for m in ALL_MODELS}
    assert files == {f"{k}.schema.json" for k in kinds} | {UNION_FILE, ASYNCAPI_FILE}
    assert sorted(Path(line).name for line in printed.splitlines()) == sorted(files)
    for kind, msg in SAMPLES.items():
        schema = json.loads((out / f"{kind}.schema.json").read_text())
        jsonschema.Draft202012Validator(schema).validate(json.loads(encode(msg)))
    doc = json.loads((out / ASYNCAPI_FILE).read_text())
    assert len(doc["channels"]) == len(channel_specs())


def test_cli_export_via_clirunner(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["schema", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    _check_export_dir(tmp_path, result.output)


def test_cli_export_as_a_real_subprocess(tmp_path: Path) -> None:
    fedmq = Path(sys.executable).parent / "fedmq"
    run = subprocess.run(
        [str(fedmq), "schema", "export", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    _check_export_dir(tmp_path, run.stdout)


def test_cli_help_has_an_example() -> None:
    for args in (["schema", "--help"], ["schema", "export", "--help"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and "Example:" in result.output


def test_cli_creates_a_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "contract" / "v1"  # the README example: no mkdir first
    result = CliRunner().invoke(cli, ["schema", "export", str(target)])
    assert result.exit_code == 0, result.output
    _check_export_dir(target, result.output)


@pytest.mark.parametrize("case", ["a file", "under a file", "unwritable"])
def test_cli_bad_directory_is_one_line_error(tmp_path: Path, case: str) -> None:
    target = tmp_path / "nope"
    if case == "a file":
        target.write_text("x")
    elif case == "under a file":
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "sub"
    elif case == "unwritable":
        # Even root cannot create files in /proc/self; a chmod would not stop root.
        target = Path("/proc/self")
    result = CliRunner().invoke(cli, ["schema", "export", str(target)])
    assert result.exit_code == EXIT["usage"]
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(target) in lines[0]
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_bad_prefix_is_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["schema", "export", str(tmp_path), "--prefix", "a b/v1"])
    assert result.exit_code == EXIT["usage"]
    assert len(result.output.strip().splitlines()) == 1 and "prefix" in result.output
    assert list(tmp_path.iterdir()) == []


def test_export_function_honours_the_prefix(tmp_path: Path) -> None:
    export(tmp_path, prefix="acme/pdm/fedmq/v1")
    doc = json.loads((tmp_path / ASYNCAPI_FILE).read_text())
    assert all(c["address"].startswith("acme/pdm/fedmq/v1/") for c in doc["channels"].values())
