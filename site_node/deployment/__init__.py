"""The site side of deployments: receive, check, approve, store and activate a model
(``fedmq deploy``), then hand it to the scoring engine. See :mod:`.service`."""
