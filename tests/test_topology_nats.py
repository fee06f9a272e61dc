"""A three-node NATS cluster (JetStream, MQTT 3.1.1) with the MQTT stream's leader killed.

Three nats-server nodes run the shipped example (broker_config/topologies/nats-cluster.conf,
stream replicas 3). Real ``fedmq-site run`` processes publish to one node, the real
``fedmq serve`` is on another, and the node that leads ``$MQTT_msgs`` (the stream that holds
every QoS 1 message) is killed with kill -9 while they stream, then restarted on its store.

Side by side, during the same kill: a plain paho publisher (on the sites' node) sends
numbered QoS 1 messages and counts PUBACKs; a persistent-session subscriber (on serve's
node) counts what arrives. Whatever the broker PUBACKed and never delivered is the raw
MQTT loss, measured, not asserted (it depends on the broker's version and timing). fedmq
must lose and duplicate nothing: a site deletes only what the coordinator committed.

Long: marked ``topology`` (not in the default run); see docs/scaling.md for the command.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.coord_proc import Coordinator
from tests.helpers.db import query
from tests.helpers.site_proc import SiteProc, make_site_fixture  # noqa: F401 (fixture)
from tests.helpers.topologies import (
    NatsCluster,
    RawQos1Probe,
    drained,
    nats_cluster,
    site_tally,
)
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.topology

SITES = ["nsite-0", "nsite-1"]
RATE_HZ = 500.0  # samples/s per site, 10 per message
ROWS = 12_000  # counter-file rows per site: 24 s of streaming
RAW_MESSAGES = 4_000
RAW_RATE = 400.0  # msg/s: the kill lands about a quarter of the way in


def _roles(cluster: NatsCluster) -> tuple[str, str, str]:
    """(leader, sites' node, serve's node): the two clients' nodes are not the leader."""
    leader = wait_for(lambda: cluster.stream_leader("$MQTT_msgs"), 60, "a $MQTT_msgs leader")
    others = [n.name for n in cluster.nodes if n.name != leader]
    return str(leader), others[0], others[1]


def test_nats_stream_leader_kill9_fedmq_loses_nothing_raw_loss_side_by_side(
    prefix: str, tmp_path: Path, make_site: Callable[..., SiteProc]
) -> None:
    db = tmp_path / "c.db"
    with nats_cluster(tmp_path / "nats") as cluster:
        # The MQTT streams exist once a first MQTT client has a session: the raw probe's
        # subscriber, on node 2 for now (the roles are chosen when the leader is known).
        probe_topic = prefix.replace("/fedmq/v1", "") + "/raw"
        first = RawQos1Probe(cluster.nodes[0].port, cluster.nodes[1].port, probe_topic + "0")
        first.wait_subscribed()
        first.close()
        leader, site_node, serve_node = _roles(cluster)
        coord = Coordinator(db, cluster.node(serve_node).port, prefix)
        probe = RawQos1Probe(
            cluster.node(site_node).port,
            cluster.node(serve_node).port,
            probe_topic,
            RAW_MESSAGES,
            RAW_RATE,
        )
        try:
            probe.wait_subscribed()
            coord.start().wait_ready()
            sites = {
                name: make_site(cluster.node(site_node).port, prefix, site_id=name,
                                rate_hz=RATE_HZ, rows=ROWS, outbox={"ack_timeout_s": 5.0})
                for name in SITES
            }  # fmt: skip
            wait_for(lambda: query(db, "SELECT count(*) FROM messages")[0][0] >= 200, 120, "200")
            probe.start()
            wait_for(lambda: probe.acked_count() >= RAW_MESSAGES // 4, 60, "a quarter PUBACKed")
            victim = cluster.stream_leader("$MQTT_msgs") or leader
            cluster.node(victim).kill()
            killed_at = time.monotonic()
            at_kill = query(db, "SELECT count(*) FROM telemetry")[0][0]
            acked_at_kill = probe.acked_count()
            assert at_kill < len(SITES) * ROWS, "the streams ended before the kill: test is void"
            # The survivors elect a new leader; then the killed node comes back on its store.
            wait_for(
                lambda: cluster.stream_leader("$MQTT_msgs") not in (None, victim),
                90,
                "a new $MQTT_msgs leader",
                step=0.3,
            )
            new_leader = cluster.stream_leader("$MQTT_msgs")
            election_s = time.monotonic() - killed_at  # polled every 0.3 s
            cluster.node(victim).start()
            cluster.wait_ready()
            wait_for(probe.finished, 120, "the raw publisher done", step=0.2)
            wait_for(
                lambda: all(
                    drained(db, n, s.data_dir / "outbox.db", ROWS) for n, s in sites.items()
                ),
                240,
                "every site drained into the coordinator",
                step=0.5,
            )
            # The raw subscriber: everything the cluster still delivers from before an end
            # marker published now has arrived once the marker has (one stream, in order).
            wait_for(lambda: probe.acked_count() == RAW_MESSAGES, 60, "every raw PUBACK")
            probe.wait_end_marker()
            assert coord.alive()
        finally:
            probe.close()
            code = coord.stop() if coord.proc is not None else 0
    assert code == 0
    tallies = [site_tally(db, n, s.data_dir / "outbox.db", ROWS) for n, s in sites.items()]
    raw = probe.figures()
    fedmq = {
        "samples": sum(t["samples"] for t in tallies),
        "stored": sum(t["samples_stored"] for t in tallies),
        "lost": sum(t["samples_lost"] for t in tallies),
        "duplicated": sum(t["samples_duplicated"] for t in tallies),
        "messages": sum(t["produced"] for t in tallies),
        "messages_lost": sum(t["lost"] for t in tallies),
    }
    report = {
        "killed": victim,
        "new_leader": new_leader,
        "sites_on": site_node,
        "serve_on": serve_node,
        "new_leader_after_s": round(election_s, 1),
        "raw_pubacked_at_kill": acked_at_kill,
        # what a site had to re-send because the first copy never reached the database
        "stored_from_a_resend": query(db, "SELECT count(*) FROM messages WHERE historical")[0][0],
        "raw": raw,
        "fedmq": fedmq,
        "sites": tallies,
    }
    sys.stdout.write(json.dumps({"nats_leader_kill9": report}, indent=1) + "\n")
    sys.stdout.write(
        f"\nNATS $MQTT_msgs leader {victim} killed (sites on {site_node}, serve on "
        f"{serve_node}):\n"
        f"  new leader {new_leader} after {election_s:.1f} s\n"
        f"  raw paho QoS 1: {raw['sent']} sent, {raw['pubacked']} PUBACKed, "
        f"{raw['received']} received, {raw['pubacked_lost']} PUBACKed and lost\n"
        f"  fedmq sites:    {fedmq['samples']} samples produced, {fedmq['stored']} stored, "
        f"{fedmq['lost']} lost, {fedmq['duplicated']} duplicated\n"
    )
    assert raw["pubacked"] == raw["sent"] == RAW_MESSAGES
    for t in tallies:
        assert t["produced"] > 0 and t["stored"] == t["produced"] == t["message_rows"], t
        assert t["lost"] == t["foreign"] == 0, t
        assert t["messages_with_duplicate_samples"] == 0, t
        assert t["samples_exact"] and t["samples_stored"] == ROWS, t
        assert t["samples_lost"] == t["samples_duplicated"] == 0, t
        assert t["outbox_depth"] == t["outbox_dropped"] == 0 and t["acked_all"], t
