"""Ingest: the writer thread that decodes, stores, commits and then acks what sites send.

``ingestor`` (the writer thread and its batches), ``writer_process`` (telemetry decode and
insert in a child process), ``acks`` (the contiguous ack per stream), ``streams`` (site
epochs: restarts and conflicts), ``admission`` (what one site may cost), ``liveness``
(online / stale / offline) and ``deadletters`` (rejected input).
"""
