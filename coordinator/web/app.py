"""The dashboard's routes: pages, their JSON API, the SSE stream and ``/metrics``.

Every route here only reads (the store, opened read-only per request): on loopback they
need no token; elsewhere the bearer token, or the cookie a page visit with ``?token=``
sets. What changes state (runs, alarm acknowledgements, deployments: coordinator/api/)
lives with the control API and always needs the token.
Endpoints: docs/dashboard.md.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from coordinator.store import deployments, read, training_read
from coordinator.web import pages
from coordinator.web.hub import Hub
from fedmq_runtime.clock import now_ms

__all__ = ["COOKIE", "STATIC", "Dashboard"]

STATIC = Path(__file__).with_name("static")
COOKIE = "fedmq_token"
KEEPALIVE_S = 15.0
STREAM_TICK_S = 0.2


def _clean(value: Any) -> Any:
    """NaN and infinities as null (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, allow_nan=False, separators=(",", ":"), default=str)
        except ValueError:
            text = json.dumps(_clean(content), separators=(",", ":"), default=str)
        return text.encode()


def _int(request: Request, name: str, default: int | None, lo: int = 0, hi: int = 2**62) -> Any:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    value = int(raw)  # ValueError: 400 (see _guard)
    return min(max(value, lo), hi)


class Dashboard:
    """The routes over one database; ``stop`` ends the hub and every open stream."""

    def __init__(self, db: Path, token: str, loopback: bool, interval: float = 1.0) -> None:
        self.db, self.token, self.loopback = Path(db), token, loopback
        self.hub = Hub(self.db, interval).start()
        from coordinator.web.metrics import make_registry

        self.registry = make_registry(self.hub)

    def stop(self) -> None:
        self.hub.stop()

    # -- access ---------------------------------------------------------------------

    def may_read(self, request: Request) -> bool:
        if self.loopback:
            return True
        want = f"Bearer {self.token}".encode()
        given = request.headers.get("authorization", "").encode()
        cookie = request.cookies.get(COOKIE, "").encode()
        return hmac.compare_digest(given, want) or hmac.compare_digest(cookie, self.token.encode())

    def _guard(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def wrapped(request: Request) -> Response:
            if not self.may_read(request):
                return Json({"error": "missing or wrong token (Authorization: Bearer "
                             "<token file>, or open a page once with ?token=...)"},
                            status_code=401)  # fmt: skip
            try:
                return handler(request)
            except ValueError as exc:
                return Json({"error": f"bad query: {exc}"[:300]}, status_code=400)
            except read.DatabaseMissing:
                return Json({"error": "the database does not exist yet"}, status_code=503)
            except sqlite3.OperationalError as exc:
                return Json({"error": f"store busy or not ready: {exc}"}, status_code=503)

        return wrapped

    def _conn(self) -> sqlite3.Connection:
        return read.open_db(self.db)

    # -- pages ----------------------------------------------------------------------

    def page(self, name: str) -> Callable[[Request], Response]:
        def handler(request: Request) -> Response:
            token = request.query_params.get("token")
            if token is not None:  # remember it for this browser, then drop it from the URL
                response: Response = RedirectResponse(request.url.remove_query_params("token"))
                if hmac.compare_digest(token.encode(), self.token.encode()):
                    response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return response
            if not self.may_read(request):
                return HTMLResponse(pages.login(), status_code=401)
            params = dict(request.path_params)
            return HTMLResponse(pages.render(name, params))

        return handler

    # -- JSON -----------------------------------------------------------------------

    def api_sites(self, request: Request) -> Response:
        conn = self._conn()
        try:
            rows, info = read.fleet(conn)
            counts = read.active_alarm_counts(conn)
            active = deployments.active_models(conn)
        finally:
            conn.close()
        state = request.query_params.get("state")
        if state:
            rows = [r for r in rows if r["state"] == state]
        for r in rows:  # the version active at the site (fedmq deployments), if any
            dep = active.get(r["site"])
            r["model"] = dep["model_version"] if dep else None
            r["model_since"] = dep["since"] if dep else None
            r["alarms"] = counts.get(r["site"], 0)
        return Json({"sites": rows, "coordinator": info, "now": now_ms()})

    def api_site(self, request: Request) -> Response:
        site = request.path_params["site"]
        conn = self._conn()
        try:
            detail = read.site_detail(conn, site, _int(request, "events", 50, 1, 1000))
            if detail is None:
                return Json({"error": f"no site {site!r}"}, status_code=404)
            detail["sensors"] = read.site_sensors(conn, site)
            detail["alarms"] = [a for a in read.alarms(conn, active=True) if a["site"] == site]
            detail["predictions"] = self._latest_predictions(conn, site)
            dep = deployments.active_models(conn).get(site)
        finally:
            conn.close()
        detail["model"] = dep["model_version"] if dep else None
        detail["deployment"] = dep
        return Json(detail)

    @staticmethod
    def _latest_predictions(conn: sqlite3.Connection, site: str) -> list[dict[str, Any]]:
        """The newest prediction of each device of ``site``."""
        newest: dict[str, dict[str, Any]] = {}
        for p in read.predictions(conn, site, limit=500):  # oldest first
            newest[p["device"]] = p
        return sorted(newest.values(), key=lambda p: p["device"])

    def api_predictions(self, request: Request) -> Response:
        site = request.path_params["site"]
        device = request.query_params.get("device") or None
        limit = _int(request, "limit", 100, 1, 10_000)
        conn = self._conn()
        try:
            rows = read.predictions(conn, site, device, _int(request, "since", None), limit)
        finally:
            conn.close()
        return Json({"site": site, "device": device, "predictions": rows})

    def api_telemetry(self, request: Request) -> Response:
        site = request.path_params["site"]
        device, sensor = request.query_params.get("device"), request.query_params.get("sensor")
        if not device or not sensor:
            raise ValueError("device and sensor are required")
        now = now_ms()
        since = _int(request, "since", now - 3_600_000)
        until = _int(request, "until", None)
        limit = _int(request, "limit", 20_000, 1, 200_000)
        conn = self._conn()
        try:
            points = read.telemetry_window(conn, site, device, sensor, since, until, limit)
        finally:
            conn.close()
        return Json({"site": site, "device": device, "sensor": sensor, "points": points})

    def api_sparklines(self, request: Request) -> Response:
        sites = [s for s in request.query_params.get("sites", "").split(",") if s][:1000]
        minutes = _int(request, "minutes", 30, 1, 24 * 60)
        conn = self._conn()
        try:
            series = read.heartbeat_series(conn, sites, now_ms() - minutes * 60_000)
        finally:
            conn.close()
        return Json({"columns": ["at", "cpu", "mem", "disk", "outbox", "acked"], "series": series})

    def api_events(self, request: Request) -> Response:
        site = request.query_params.get("site") or None
        conn = self._conn()
        try:
            rows = read.events(conn, site, _int(request, "limit", 200, 1, 5000))
            counts = read.event_counts(conn, site)
        finally:
            conn.close()
        return Json({"events": rows, "counts": counts})

    def api_dead_letters(self, request: Request) -> Response:
        reason = request.query_params.get("reason") or None
        site = request.query_params.get("site") or None
        conn = self._conn()
        try:
            rows = read.dead_letters_page(conn, reason, site, _int(request, "limit", 200, 1, 5000))
            counts = read.dead_letter_counts(conn)
        finally:
            conn.close()
        return Json({"dead_letters": rows, "counts": counts})

    def api_runs(self, request: Request) -> Response:
        conn = self._conn()
        try:
            runs = training_read.runs(conn, _int(request, "limit", 50, 1, 1000))
            pending = self._pending(conn)
            models = training_read.models(conn)[:100]
        finally:
            conn.close()
        return Json({"runs": runs, "pending": pending, "models": models})

    def api_run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        conn = self._conn()
        try:
            detail = training_read.run_detail(conn, run_id)
            if detail is None:
                return Json({"error": f"no run {run_id!r}"}, status_code=404)
            detail["jobs"] = training_read.jobs(conn, run_id)
            detail["models"] = training_read.models(conn, run_id)
            where: dict[str, list[str]] = {}  # model version -> sites it is active at
            for site, dep in sorted(deployments.active_models(conn).items()):
                where.setdefault(dep["model_version"], []).append(site)
            for m in detail["models"]:
                m["deployed_at"] = where.get(m["model_id"], [])
        finally:
            conn.close()
        detail.pop("spec", None)
        return Json(detail)

    @staticmethod
    def _pending(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        """Jobs waiting for a site operator's approval, with the code hash to approve."""
        rows = training_read.jobs(conn, state="pending_approval")
        hashes = {r["run_id"]: r.get("code_hash") for r in training_read.runs(conn, 1000)}
        if rows and not all(h for h in hashes.values()):
            hashes.update(
                (r["run_id"], (training_read.run_detail(conn, r["run_id"]) or {}).get("code_hash"))
                for r in rows
                if r.get("run_id")
            )
        for r in rows:
            r["code_hash"] = hashes.get(r.get("run_id"))
        return rows

    def api_alarms(self, request: Request) -> Response:
        """Every alarm's current state, the most recently changed first (``active=1``: only
        the active ones; ``site=``: one site's; ``limit``)."""
        active = request.query_params.get("active", "") not in ("", "0", "false", "no")
        site = request.query_params.get("site") or None
        limit = _int(request, "limit", 500, 1, 10_000)
        conn = self._conn()
        try:
            rows = read.alarms(conn, active=active)
        finally:
            conn.close()
        if site is not None:
            rows = [a for a in rows if a["site"] == site]
        n_active = sum(a["state"] == "active" for a in rows)
        return Json({"alarms": rows[:limit], "active": n_active, "now": now_ms()})

    def metrics(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    # -- the stream -----------------------------------------------------------------

    async def stream(self, request: Request) -> Response:
        if not self.may_read(request):
            return Json({"error": "missing or wrong token"}, status_code=401)
        sites = [s for s in request.query_params.get("site", "").split(",") if s][:20]
        raw = request.headers.get("last-event-id") or request.query_params.get("last")
        try:
            last = int(raw) if raw else None
        except ValueError:
            last = -1  # garbage: reload
        return StreamingResponse(
            self._events(sites, last),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _events(self, sites: list[str], last: int | None) -> AsyncIterator[str]:
        hub = self.hub
        wanted = set(sites)
        hub.attach()
        hub.watch(sites)
        try:
            replay, reset = hub.since(last)
            start = hub.last_id if last is None or reset else last
            hello = {"first_id": hub.first_id, "resumed": last is not None and not reset}
            yield f"retry: 1000\nid: {start}\nevent: hello\ndata: {json.dumps(hello)}\n\n"
            if reset:
                yield "event: reset\ndata: {}\n\n"
            cursor, quiet = start, 0.0
            pending = replay
            while not hub.stopped:
                for eid, kind, data in pending:
                    cursor = eid
                    if kind == "samples" and json.loads(data).get("site") not in wanted:
                        continue
                    yield f"id: {eid}\nevent: {kind}\ndata: {data}\n\n"
                    quiet = 0.0
                await asyncio.sleep(STREAM_TICK_S)
                quiet += STREAM_TICK_S
                if quiet >= KEEPALIVE_S:
                    yield ": keepalive\n\n"
                    quiet = 0.0
                pending, reset = hub.since(cursor)
                if reset:
                    yield "event: reset\ndata: {}\n\n"
                    cursor = hub.last_id
        finally:
            hub.unwatch(sites)
            hub.detach()

    # -- the routes -----------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        g = self._guard
        return [
            Route("/", lambda r: RedirectResponse("/fleet")),
            Route("/fleet", self.page("fleet")),
            Route("/sites/{site}", self.page("site")),
            Route("/training", self.page("training")),
            Route("/alarms", self.page("alarms")),
            Route("/events", self.page("events")),
            Route("/api/sites", g(self.api_sites)),
            Route("/api/sites/{site}", g(self.api_site)),
            Route("/api/sites/{site}/telemetry", g(self.api_telemetry)),
            Route("/api/sites/{site}/predictions", g(self.api_predictions)),
            Route("/api/sparklines", g(self.api_sparklines)),
            Route("/api/events", g(self.api_events)),
            Route("/api/dead-letters", g(self.api_dead_letters)),
            Route("/api/training/runs", g(self.api_runs)),
            Route("/api/training/runs/{run_id}", g(self.api_run)),
            Route("/api/alarms", g(self.api_alarms)),
            Route("/api/stream", self.stream),
            Route("/metrics", g(self.metrics)),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
