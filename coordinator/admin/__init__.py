"""Operator tooling that runs once, not in the daemon: broker credentials and ACLs
(``broker_init``, ``passwords``), a development CA (``dev_ca``), the command signing keys
(``signing``) and the JSON Schema export of the wire contract (``schema_export``)."""
