"""``GET /metrics``: the coordinator in the Prometheus text format.

A collector of its own registry (no process-global state): every scrape reads the store
read-only, the ingest rates come from the dashboard hub's poll.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from coordinator.store import read
from coordinator.web.hub import Hub

__all__ = ["STATES", "make_registry"]

STATES = ("online", "stale", "offline", "conflict", "unknown")
ROUND_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class _Fleet(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        conn = read.open_db(self.hub.db)
        try:
            yield from self._collect(conn)
        finally:
            conn.close()

    def _collect(self, conn: Any) -> Iterator[Any]:
        self.hub.rate_point(read.high_water(conn))
        sites, info = read.fleet(conn)
        up = GaugeMetricFamily("fedmq_coordinator_running", "1 while fedmq serve stamps the store")
        up.add_metric([], 1.0 if info["running"] else 0.0)
        yield up
        by_state = GaugeMetricFamily("fedmq_sites", "Sites by state", labels=["state"])
        counts = {s: 0 for s in STATES}
        for s in sites:
            counts[s["state"] if s["state"] in counts else "unknown"] += 1
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        msgs, samples = self.hub.rates()
        m = GaugeMetricFamily(
            "fedmq_ingest_messages_per_second",
            "Durable messages stored per second (last ~10 s, or since the previous scrape)",
        )
        m.add_metric([], msgs)
        yield m
        t = GaugeMetricFamily(
            "fedmq_ingest_samples_per_second",
            "Telemetry samples stored per second (last ~10 s, or since the previous scrape)",
        )
        t.add_metric([], samples)
        yield t
        lag = GaugeMetricFamily(
            "fedmq_site_ack_lag_messages",
            "Seqs the coordinator acked that the site's last heartbeat did not report acked yet",
            labels=["site"],
        )
        depth = GaugeMetricFamily(
            "fedmq_site_outbox_depth", "Messages in the site's outbox (last heartbeat)",
            labels=["site"],
        )  # fmt: skip
        for s in sites:
            lag.add_metric([s["site"]], s["ack_lag"])
            depth.add_metric([s["site"]], s["outbox_depth"] or 0)
        yield lag
        yield depth
        dead = GaugeMetricFamily(
            "fedmq_dead_letters", "Dead letters stored, by reason", labels=["reason"]
        )
        for reason, n in sorted(read.dead_letter_counts(conn).items()):
            dead.add_metric([reason], n)
        yield dead
        alarms = GaugeMetricFamily(
            "fedmq_alarms_active", "Active alarms, by severity", labels=["severity"]
        )
        severities: dict[str, int] = {}
        for a in read.alarms(conn, active=True):
            key = str(a["severity"] or "")
            severities[key] = severities.get(key, 0) + 1
        for severity, n in sorted(severities.items()):
            alarms.add_metric([severity], n)
        yield alarms
        yield self._rounds(conn)
        polls = CounterMetricFamily(
            "fedmq_dashboard_polls", "Store polls of the dashboard hub (only while a tab is open)"
        )
        polls.add_metric([], self.hub.polls)
        yield polls
        poll_cpu = CounterMetricFamily(
            "fedmq_dashboard_poll_cpu_seconds", "CPU time the dashboard hub's polls took"
        )
        poll_cpu.add_metric([], self.hub.poll_s)
        yield poll_cpu
        tabs = GaugeMetricFamily("fedmq_dashboard_streams", "Open dashboard event streams")
        tabs.add_metric([], self.hub.tabs)
        yield tabs

    @staticmethod
    def _rounds(conn: Any) -> HistogramMetricFamily:
        walls = [r["wall_s"] for r in read.round_timings(conn) if r["wall_s"] is not None]
        buckets, total = [], 0
        for bound in ROUND_BUCKETS:
            buckets.append((str(bound), float(sum(1 for w in walls if w <= bound))))
        buckets.append(("+Inf", float(len(walls))))
        total = sum(walls)
        h = HistogramMetricFamily(
            "fedmq_round_duration_seconds",
            "Wall time of the newest 500 closed training rounds, start to close",
        )
        h.add_metric([], buckets, total)
        return h


def make_registry(hub: Hub) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fleet(hub))
    return registry
