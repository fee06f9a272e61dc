"""Deploying trained models to sites (``fedmq deploy``, ``fedmq deployments``).

``plan``: what a request means (model, sites, rollback targets), no side effects;
``service``: the :class:`DeployService` inside ``fedmq serve`` that records and publishes
the signed ``cmd/deploy`` commands. The sites' statuses come back through ingest.
"""
