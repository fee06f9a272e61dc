"""A small stdlib client of the control API (``fedmq train``, ``fedmq demo``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["ApiClient", "ApiError"]


class ApiError(Exception):
    """The daemon could not be reached, or refused the request; ``status`` 0 if unreachable."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    def __init__(self, url: str, token: str | None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                why = json.loads(exc.read()).get("error", "")
            except Exception:
                why = ""
            raise ApiError(f"{method} {path}: HTTP {exc.code} {why}".rstrip(), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"coordinator API unreachable at {self.url}: {reason}") from None

    def health(self) -> bool:
        return bool(self._call("GET", "/api/health").get("ok"))

    def submit(self, spec: dict[str, Any]) -> str:
        return str(self._call("POST", "/api/runs", {"spec": spec})["run_id"])

    def resume(self, run_id: str) -> str:
        return str(self._call("POST", f"/api/runs/{run_id}/resume", {})["run_id"])

    def events(self, run_id: str, after: int, wait: float = 10.0) -> dict[str, Any]:
        path = f"/api/runs/{run_id}/events?after={after}&wait={wait:g}"
        return dict(self._call("GET", path, timeout=wait + self.timeout))

    def cancel(self, run_id: str) -> bool:
        return bool(self._call("POST", f"/api/runs/{run_id}/cancel", {}).get("cancelled"))

    # Deployments (coordinator/api/deployments.py) ------------------------------------

    def deploy(self, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """``POST /api/deployments``; a refusal raises ApiError (its message the reason)."""
        return dict(self._call("POST", "/api/deployments", request, timeout=timeout))

    def deployments(self, site: str | None = None, history: bool = False) -> list[Any]:
        query = "&".join(
            p for p in (f"site={site}" if site else "", "history=1" if history else "") if p
        )
        path = "/api/deployments" + (f"?{query}" if query else "")
        return list(self._call("GET", path)["deployments"])

    def deployment(self, deployment_id: str) -> list[Any]:
        """Per site, where deployment ``deployment_id`` stands."""
        return list(self._call("GET", f"/api/deployments/{deployment_id}")["sites"])
