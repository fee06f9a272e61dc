"""Site-side federated training: policy, job store, chunked weights, the syft worker.

Loaded by the daemon only when the site config has a ``[training]`` table (entry point
``site_node.training.jobs.service:install``); importing this package imports neither torch nor syft.
"""

from site_node.training.jobs.config import DatasetConfig, TrainingSettings

__all__ = ["DatasetConfig", "TrainingSettings"]
