"""The training worker process: where syft and torch live at a site.

The site daemon never imports torch, syft or pandas. Its job controller hands operations
to a :class:`WorkerSupervisor`, which runs them in a separate process started on demand
(``python -m site_node.training.worker``), kept warm while work keeps coming and stopped
when idle; the worker's death or its memory limit fails the job it was running, never
the site.

- ``protocol``: the operations and reports exchanged over the pipe
- ``supervisor``: the daemon's side (start, feed, watch memory and idle time, stop)
- ``main``: the worker process (runs :class:`site_node.training.jobs.runner.Runner`)
- ``limits``: memory, threads and nice level
"""

from site_node.training.worker.supervisor import WorkerDown, WorkerState, WorkerSupervisor

__all__ = ["WorkerDown", "WorkerState", "WorkerSupervisor"]
