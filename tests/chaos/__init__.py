"""Fault experiments as a suite: ``python -m tests.chaos`` (see docs/reliability.md).

A real Mosquitto, ``fedmq serve`` and ``fedmq-site run`` processes on loopback; bounded
loops of kill -9 (sites, the coordinator and its writer child, the broker, mixed), a TCP
stall longer than a site's keepalive and a full disk; then every site's produced
``(epoch, seq)`` set and every sample it read are checked against the coordinator's
database. Modules: ``cluster`` (the processes), ``proxy`` (the stalling TCP proxy),
``monitor`` (heartbeats on the wire), ``faults`` (inject, restore, time the recovery),
``accounting`` (produced vs stored), ``scenario`` (the run), ``report`` (what it prints).
"""
