"""The control API's routes (Starlette): submit, follow and cancel training runs.

::

    GET  /api/health                          {"ok": true}
    (and the web dashboard's pages, read-only JSON, SSE and /metrics: coordinator/web)
    POST /api/runs              {"spec": {..}} 202 {"run_id"}    (token)
    POST /api/runs/{id}/resume                 202 {"run_id"}    (token)
    GET  /api/runs/{id}/events?after=N&wait=S  {"events", "next", "outcome", "session"}
    POST /api/runs/{id}/cancel                 {"cancelled"}     (token)
    POST /api/alarms/{id}/ack   {"by": NAME}   {"alarm": row}    (token)
    POST /api/deployments       {"model", "sites"|"all", ..} 202  (token)
    GET  /api/deployments, GET /api/deployments/{id}   (coordinator/api/deployments.py)

``events`` long-polls: it answers as soon as there is an event after ``N`` or the run
ended, else after ``wait`` seconds (at most 30). ``outcome`` is null while the run goes
on, then ``{"state", "reason", "model_id", "interrupted", "exit_code"}`` or
``{"error", "code"}`` when it could not start or go on. Events live in the daemon's
memory: after a restart (``session`` changes) a resumed run's events start again at 0.

``ack`` records who (``by``, default "dashboard") acknowledged the alarm with that ``id``
(``fedmq alarms``) and when (coordinator/store/alarm_ack.py); 404 for an unknown id. The
token comes as ``Authorization: Bearer``, or, for the dashboard's pages, as the cookie a
visit with ``?token=`` sets (SameSite=Strict, and only with a JSON body, which a
cross-site form cannot send).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from coordinator.api.deployments import deployment_routes
from coordinator.store.alarm_ack import AlarmUnknown, ack_alarm
from coordinator.store.urls import is_postgres_url
from coordinator.training.events import TrainSpec
from coordinator.training.service import TrainService

__all__ = ["make_app"]

TOKEN_COOKIE = "fedmq_token"  # the dashboard's cookie (coordinator/web/app.py COOKIE)
_SQLITE_ONLY = (
    "{} needs the SQLite store in this release: this daemon stores in PostgreSQL (docs/postgres.md)"
)


def make_app(
    service: TrainService, token: str, loopback: bool, dashboard: bool = True, deploy: Any = None
) -> Starlette:
    """The app; ``loopback`` False makes every route need the token, reads included.

    ``dashboard``: also serve the web dashboard (coordinator/web, docs/dashboard.md) on the
    service's database; ``app.state.stop()`` ends its poller and open streams.
    ``deploy``: serve's ``coordinator.deployment.service.DeployService`` (None: the deployment
    routes answer 503).

    On a PostgreSQL store (the service's ``settings.db`` a URL) runs are submitted,
    followed and cancelled as on SQLite; deployments, alarm acknowledgements and the
    dashboard still need SQLite: their routes answer 503 saying so (no dashboard pages).
    """
    db = getattr(getattr(service, "settings", None), "db", None)
    on_postgres = is_postgres_url(db)
    if on_postgres:
        deploy, dashboard = None, False
    if not loopback and not token:
        raise ValueError(
            "refusing to serve the control API on an address other than loopback without a "
            "token: anyone on the network could read the fleet and start or cancel runs"
        )

    def authorized(request: Request, write: bool) -> bool:
        if not write and loopback:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def authorized_page(request: Request) -> bool:
        """The bearer token, or the dashboard's token cookie on a JSON request."""
        if authorized(request, True):
            return True
        cookie = request.cookies.get(TOKEN_COOKIE, "")
        json_body = request.headers.get("content-type", "").startswith("application/json")
        return bool(token) and json_body and hmac.compare_digest(cookie.encode(), token.encode())

    def refused() -> JSONResponse:
        return JSONResponse(
            {"error": "missing or wrong token (Authorization: Bearer <token file>)"},
            status_code=401,
        )

    async def health(request: Request) -> JSONResponse:
        if not authorized(request, False):
            return refused()
        return JSONResponse({"ok": True})

    async def submit(request: Request) -> JSONResponse:
        if not authorized(request, True):
            return refused()
        try:
            body = await request.json()
            spec = TrainSpec.from_json(dict(body["spec"]))
            spec.validate()  # task, rounds, quorum, aggregate, strategy and its settings
        except Exception as exc:  # malformed JSON, unknown shape: the client's fault
            return JSONResponse({"error": f"bad run spec: {exc}"[:500]}, status_code=400)
        handle = service.submit(spec)
        return JSONResponse({"run_id": handle.run_id}, status_code=202)

    async def resume(request: Request) -> JSONResponse:
        if not authorized(request, True):
            return refused()
        handle = service.resume(request.path_params["run_id"])
        return JSONResponse({"run_id": handle.run_id}, status_code=202)

    async def events(request: Request) -> JSONResponse:
        if not authorized(request, False):
            return refused()
        handle = service.get(request.path_params["run_id"])
        if handle is None:
            return JSONResponse({"error": "no such run in this daemon"}, status_code=404)
        try:
            after = max(int(request.query_params.get("after", "0")), 0)
            wait = min(max(float(request.query_params.get("wait", "0")), 0.0), 30.0)
        except ValueError:
            return JSONResponse({"error": "after: integer, wait: seconds"}, status_code=400)
        deadline = time.monotonic() + wait
        while len(handle.events) <= after and not handle.finished:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        outcome = handle.outcome()  # read before the events: none is missed
        new: list[Any] = handle.events[after:]
        return JSONResponse(
            {"events": new, "next": after + len(new), "outcome": outcome,
             "session": service.session}
        )  # fmt: skip

    async def cancel(request: Request) -> JSONResponse:
        if not authorized(request, True):
            return refused()
        run_id = request.path_params["run_id"]
        if service.get(run_id) is None:
            return JSONResponse({"error": "no such run in this daemon"}, status_code=404)
        return JSONResponse({"cancelled": service.cancel(run_id)})

    async def ack(request: Request) -> JSONResponse:
        if not authorized_page(request):
            return refused()
        try:
            alarm = int(request.path_params["alarm"])
            raw = await request.body()
            body = json.loads(raw) if raw.strip() else {}
            by = str((body or {}).get("by") or "dashboard").strip()[:100] or "dashboard"
        except (ValueError, AttributeError) as exc:
            return JSONResponse({"error": f"bad request: {exc}"[:300]}, status_code=400)
        if db is None:
            return JSONResponse({"error": "no database"}, status_code=503)
        if on_postgres:
            return JSONResponse({"error": _SQLITE_ONLY.format("alarm acknowledgement")}, 503)
        try:
            row = await run_in_threadpool(ack_alarm, db, alarm, by)
        except AlarmUnknown:
            return JSONResponse({"error": f"no alarm {alarm}"}, status_code=404)
        return JSONResponse({"alarm": row})

    deploy_why = [_SQLITE_ONLY.format("deployments")] if on_postgres else []
    routes: list[BaseRoute] = [
        Route("/api/health", health),
        Route("/api/runs", submit, methods=["POST"]),
        Route("/api/runs/{run_id}/resume", resume, methods=["POST"]),
        Route("/api/runs/{run_id}/events", events),
        Route("/api/runs/{run_id}/cancel", cancel, methods=["POST"]),
        Route("/api/alarms/{alarm}/ack", ack, methods=["POST"]),
        *deployment_routes(deploy, authorized, refused, *deploy_why),
    ]
    web = None
    if dashboard and db is not None:
        from coordinator.web.app import Dashboard

        web = Dashboard(db, token, loopback)
        routes += web.routes()
    app = Starlette(routes=routes)
    app.state.stop = web.stop if web is not None else (lambda: None)
    app.state.dashboard = web
    return app
