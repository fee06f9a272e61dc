"""Training at the site: the jobs service (``jobs``), the PySyft datasite that runs a job
on the site's private data (``datasite``, ``datasite_accounts``, ``hosted``, ``job_body``,
``job_files``), the tasks it may run (``tasks``) and the weights format (``weights_io``).

Only this package imports torch and syft, lazily: a telemetry-only site never loads it.
"""
