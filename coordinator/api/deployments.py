"""The control API's deployment routes (``fedmq deploy``, ``fedmq deployments``)::

    POST /api/deployments   {model | rollback, sites | all, cadence_s, rules, devices,
                             expires_s, requested_by}
                            202 {"deployments": [..], "sites": [{site, outcome, reason,
                                 deployment_id, model_version}]}              (token)
    GET  /api/deployments?site=S&history=1   {"deployments": [..]}
    GET  /api/deployments/{id}               {"deployment_id", "sites": [..]}  404 unknown

A refused request sends nothing and answers 400 (bad request, no signing key), 404
(unknown model), 409 (a named site cannot take it: ``sites`` says which and why) or 503
(broker unreachable), with ``{"error", "code", "sites"}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from coordinator.deployment.plan import DeployError, DeployRequest

__all__ = ["deployment_routes"]

_STATUS = {"usage": 400, "not_found": 404, "refused": 409, "broker": 503}


def deployment_routes(
    deploy: Any,
    authorized: Callable[[Request, bool], bool],
    refused: Callable[[], JSONResponse],
    why_none: str = "this daemon has no deploy service",
) -> list[BaseRoute]:
    """Routes over ``deploy`` (a ``coordinator.deployment.service.DeployService``, or None
    when serve runs without one: every route then answers 503 with ``why_none``)."""

    def unavailable() -> JSONResponse:
        return JSONResponse({"error": why_none, "code": "unavailable"}, status_code=503)

    async def create(request: Request) -> JSONResponse:
        if not authorized(request, True):
            return refused()
        if deploy is None:
            return unavailable()
        try:
            body = await request.json()
        except ValueError as exc:
            return JSONResponse({"error": f"bad JSON: {exc}"[:300], "code": "usage"}, 400)
        try:
            req = DeployRequest.from_json(body)
            out = await run_in_threadpool(deploy.deploy, req)
        except DeployError as exc:
            return JSONResponse(
                {"error": str(exc)[:2000], "code": exc.code,
                 "sites": [s.to_json() for s in exc.sites]},
                status_code=_STATUS.get(exc.code, 400),
            )  # fmt: skip
        return JSONResponse(out, status_code=202)

    async def listing(request: Request) -> JSONResponse:
        if not authorized(request, False):
            return refused()
        if deploy is None:
            return unavailable()
        site = request.query_params.get("site") or None
        history = request.query_params.get("history", "") not in ("", "0", "false")
        rows = await run_in_threadpool(deploy.view, site, history)
        return JSONResponse({"deployments": rows})

    async def one(request: Request) -> JSONResponse:
        if not authorized(request, False):
            return refused()
        if deploy is None:
            return unavailable()
        dep = request.path_params["deployment_id"]
        rows = await run_in_threadpool(deploy.view, None, True, dep)
        if not rows:
            return JSONResponse({"error": f"no deployment {dep}"}, status_code=404)
        return JSONResponse({"deployment_id": dep, "sites": rows})

    return [
        Route("/api/deployments", create, methods=["POST"]),
        Route("/api/deployments", listing, methods=["GET"]),
        Route("/api/deployments/{deployment_id}", one),
    ]
