"""fedmq coordinator: ingest, store, liveness, training rounds and the ``fedmq`` CLI."""

__all__: list[str] = []
