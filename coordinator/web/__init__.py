"""The web dashboard of ``fedmq serve``: pages, their JSON API, one server-sent-events
stream per tab and ``GET /metrics``, mounted into the control API's Starlette app
(docs/dashboard.md). Everything it shows is read from the store read-only."""
