"""fedmq site node: the factory-side daemon and the ``fedmq-site`` CLI."""

__all__: list[str] = []
