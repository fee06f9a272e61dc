"""``fedmq demo``: a whole federation on one machine, from the packaged FD001 data.

Its own Mosquitto, a coordinator, N ``fedmq-site`` processes each replaying and training
on its share of the C-MAPSS FD001 engines, a federated run, a learning curve and a summary.
"""

from coordinator.demo.options import DemoError, DemoLayout, DemoOptions
from coordinator.demo.runner import run_demo

__all__ = ["DemoError", "DemoLayout", "DemoOptions", "run_demo"]
