"""Live scoring at the site: a deployed model applied to each device's recent readings.

- ``model``: :class:`~site_node.scoring.model.ActiveModel`, what the deployment service
  hands over (task, code hash, verified weights on disk, cadence, rules, devices)
- ``rules``: the alarm rule grammar (``rul < 30 for 3 windows``) and its hysteresis
- ``windows``: each covered device's last ``WINDOW`` readings, kept in memory
- ``service``: :class:`~site_node.scoring.service.Scorer`, the daemon side (windows,
  the scoring thread, predictions and alarms)
- ``supervisor`` / ``worker`` / ``protocol``: the scoring process where the task's
  ``predict`` (and torch) runs; the daemon never imports torch, numpy or pandas

This module imports nothing, so ``site_node.settings`` can read ``scoring.config`` without
loading the service (docs/scoring.md).
"""
