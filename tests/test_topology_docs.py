"""docs/scaling.md shows the broker configs the topology tests run, byte for byte.

Each ``<!-- config: PATH -->`` before a fence says that the fence is the file PATH as
shipped; tests/helpers/topologies.py builds the test brokers from those files (only
addresses, ports and directories replaced), so the recipe a reader copies is the tested one.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers.broker import REPO
from tests.helpers.topologies import (
    TOPOLOGIES,
    NatsCluster,
    bridge_plant_config,
    central_config,
    nats_node_config,
)

DOC = REPO / "docs" / "scaling.md"
MARK = re.compile(r"<!-- config: (\S+) -->\n```\w*\n(.*?)```", re.S)


def test_scaling_doc_shows_each_topology_config_as_shipped() -> None:
    blocks = MARK.findall(DOC.read_text())
    shown = [path for path, _body in blocks]
    assert sorted(shown) == sorted(
        f"broker_config/topologies/{p.name}" for p in TOPOLOGIES.glob("*.conf")
    )
    for path, body in blocks:
        assert body == (REPO / path).read_text(), f"docs/scaling.md's {path} differs from the file"


def test_helpers_change_only_addresses_ports_and_directories(tmp_path: Path) -> None:
    plant = bridge_plant_config(1884, 1885, "acme/fedmq/v1")
    assert "address 127.0.0.1:1885" in plant and "topic acme/fedmq/v1/site/# out 1" in plant
    assert "central-broker.example.com" not in plant and "topic fedmq/v1/" not in plant
    central = central_config(1885, tmp_path)
    assert "persistence true" in central and "persistence false" not in central
    assert f"persistence_location {tmp_path}/" in central
    cluster = NatsCluster(tmp_path / "nats")  # writes the node configs, starts nothing
    conf = nats_node_config(cluster.nodes[1], cluster.nodes)
    assert conf == cluster.nodes[1].conf.read_text()
    assert "server_name: nats-2" in conf and "stream_replicas: 3" in conf
    assert conf.count("nats-route://127.0.0.1:") == 3 and "nats-route://nats-" not in conf
    assert f"listen: 127.0.0.1:{cluster.nodes[1].port}" in conf  # MQTT, loopback only
