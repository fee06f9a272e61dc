"""``fedmq serve``'s deploy service: signed ``cmd/deploy`` to sites, and the record of it.

A request (:class:`DeployRequest`, from ``POST /api/deployments``) is planned first
(coordinator/deployment/plan.py: the model, its verified weights, its code hash, the sites
that may take it; a rollback finds each site's previous version), then, per deployment:

1. one :class:`schemas.DeployCommand` per site is built and validated (a new
   ``deployment_id`` for the request, a new ``cmd_id`` per site, ``expires_at`` now +
   ``expires_s``, default 10 minutes), signed with serve's key exactly like
   ``cmd/train`` (coordinator/training/send.py);
2. the ``deployments`` row and one ``site_deployments`` row per site (state ``sent``) and a
   ``deployment_sent`` event are committed, so a status the site sends back always finds
   its row;
3. the command, then its weights as :class:`schemas.DeployChunk` messages when they are
   larger than ``chunk_bytes`` (the command carries their size and sha256), are published
   through serve's own MQTT client; a site whose command the broker did not take is
   marked ``failed`` with the reason.

The sites answer with durable :class:`schemas.DeploymentStatus` messages, which serve's
ingest stores (coordinator/ingest/ingestor.py). Driving it from a test::

    service = DeployService(settings, bus, session=1)
    out = service.deploy(DeployRequest(model="run-x-r3", sites=("a",)))
    out["sites"][0]["outcome"] == "sent"
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from coordinator.deployment.plan import (
    DeployError,
    DeployRequest,
    Model,
    SiteOutcome,
    Target,
    check_sites,
    current,
    previous_version,
    resolve_model,
)
from coordinator.store import (
    DeploymentRow,
    EventRow,
    SiteDeploymentRow,
    SqliteStore,
    Store,
    deployments,
    read,
)
from fedmq_runtime.clock import now_ms
from schemas import DeployChunk, DeployCommand, encode, make_blob
from schemas.weights import DEFAULT_CHUNK_BYTES

__all__ = ["DEFAULT_CADENCE_S", "DeployService", "new_deployment_id"]

log = logging.getLogger(__name__)

DEFAULT_CADENCE_S = 10.0


def new_deployment_id() -> str:
    return time.strftime("dep-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class DeployService:
    """Deploys models and rolls them back from inside ``fedmq serve``.

    ``bus``: serve's ``coordinator.bus.Bus`` (``publish``, ``connected``, ``topics``);
    ``store_factory``: a writable :class:`Store` on serve's database (a second connection
    next to the writer thread's; one per request); ``key``: the signing key, else it is
    read from ``settings.signing_key_file`` at each request.
    """

    def __init__(
        self,
        settings: Any,
        bus: Any,
        session: int,
        store_factory: Callable[[], Store] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        connect_timeout_s: float = 15.0,
        key: Any = None,
    ) -> None:
        self.settings, self.bus, self.session = settings, bus, session
        self.store_factory = store_factory or (lambda: SqliteStore(settings.db))
        self.chunk_bytes = chunk_bytes
        self.connect_timeout_s = connect_timeout_s
        self._key = key
        self._lock = threading.Lock()

    # Reads --------------------------------------------------------------------------

    def view(
        self, site: str | None = None, history: bool = False, deployment_id: str | None = None
    ) -> list[dict[str, Any]]:
        """``fedmq deployments``' rows (see coordinator/store/deployments.py)."""
        conn = read.open_db(self.settings.db)
        try:
            return deployments.deployment_view(conn, site, history, deployment_id)
        finally:
            conn.close()

    # Deploy -------------------------------------------------------------------------

    def deploy(self, request: DeployRequest) -> dict[str, Any]:
        """Plan, record and publish; returns ``{"deployments": [...], "sites": [...]}``
        (per site: ``sent``, or ``skipped`` with the reason under ``--all``).

        Raises:
            DeployError: nothing was sent (the message says why; ``sites`` per site).
        """
        key = self._signing_key()
        with self._lock:
            store = self.store_factory()
            try:
                conn = read.open_db(self.settings.db)
                try:
                    if request.rollback:
                        targets, skipped = self._plan_rollback(conn, store, request)
                    else:
                        targets, skipped = self._plan(conn, store, request)
                finally:
                    conn.close()
                if not self.bus.connected.wait(self.connect_timeout_s):
                    s = self.bus.settings
                    raise DeployError(
                        f"broker unreachable at {s.host}:{s.port}: nothing sent", "broker"
                    )
                sent: list[SiteOutcome] = []
                made: list[dict[str, Any]] = []
                for target in targets:
                    dep, outcomes = self._send(store, key, target, request)
                    made.append(dep)
                    sent += outcomes
            finally:
                store.close()
        return {"deployments": made, "sites": [o.to_json() for o in sent + skipped]}

    def _signing_key(self) -> Any:
        if self._key is not None:
            return self._key
        from coordinator.admin.signing import SigningError, load_private_key

        path = self.settings.signing_key_file
        if path is None:
            raise DeployError(
                "no command-signing key: start `fedmq serve` with --signing-key (or "
                "signing_key_file); `fedmq broker init` generates one; nothing sent"
            )
        try:
            return load_private_key(path)
        except SigningError as exc:
            raise DeployError(f"{exc}; nothing sent") from None

    def _plan(
        self, conn: Any, store: Store, request: DeployRequest
    ) -> tuple[list[Target], list[SiteOutcome]]:
        assert request.model is not None
        model = resolve_model(conn, request.model)
        ok, bad = check_sites(conn, request.sites, request.all_sites, model.task, model.code_hash)
        _refuse_if(bad, request, model.version)
        if not ok:
            raise DeployError(
                f"no registered site advertises {model.task} with code hash "
                f"{model.code_hash[:12]}: nothing sent",
                "refused",
                bad,
            )
        target = Target(
            model,
            DEFAULT_CADENCE_S if request.cadence_s is None else request.cadence_s,
            request.rules or (),
            request.devices or (),
            False,
            ok,
        )
        target.previous = {s: r.model_version for s in ok if (r := current(store, s))}
        return [target], bad

    def _plan_rollback(
        self, conn: Any, store: Store, request: DeployRequest
    ) -> tuple[list[Target], list[SiteOutcome]]:
        if request.all_sites:
            names = sorted({r.site for r in store.site_deployments() if r.state == "active"})
            if not names:
                raise DeployError("no site has an active deployment to roll back", "refused")
        else:
            names = list(dict.fromkeys(request.sites))
        bad: list[SiteOutcome] = []
        models: dict[str, Model] = {}
        groups: dict[tuple[Any, ...], Target] = {}
        for site in names:
            try:
                now, version, dep = previous_version(store, site)
                model = models.get(version) or resolve_model(conn, version)
            except DeployError as exc:
                bad.append(SiteOutcome(site, "skipped" if request.all_sites else "refused",
                                       str(exc)))  # fmt: skip
                continue
            models[version] = model
            _, refused = check_sites(conn, (site,), False, model.task, model.code_hash,
                                      {site: version})  # fmt: skip
            if refused:
                outcome = "skipped" if request.all_sites else "refused"
                bad += [SiteOutcome(r.site, outcome, r.reason, model_version=version)
                        for r in refused]  # fmt: skip
                continue
            cadence = request.cadence_s
            if cadence is None:
                cadence = dep.cadence_s if dep and dep.cadence_s else DEFAULT_CADENCE_S
            rules = request.rules if request.rules is not None else (dep.rules if dep else ())
            devices = request.devices
            if devices is None:
                devices = dep.devices if dep else ()
            key = (version, cadence, rules, devices)
            target = groups.get(key)
            if target is None:
                target = groups[key] = Target(model, cadence, rules, devices, True)
            target.sites.append(site)
            target.previous[site] = now.model_version
        _refuse_if(bad, request, "its previous version")
        if not groups:
            raise DeployError("no site can be rolled back: nothing sent", "refused", bad)
        return list(groups.values()), bad

    def _send(
        self, store: Store, key: Any, target: Target, request: DeployRequest
    ) -> tuple[dict[str, Any], list[SiteOutcome]]:
        from coordinator.admin.signing import sign

        model = target.model
        dep_id = new_deployment_id()
        now = now_ms()
        expires_at = now + int(request.expires_s * 1000)
        blob, parts = make_blob(model.weights, self.chunk_bytes)
        prefix = self.bus.topics.prefix
        messages: dict[str, list[bytes]] = {}
        for site in target.sites:
            try:
                cmd = DeployCommand(
                    site=site, session=self.session, cmd_id=uuid.uuid4().hex,
                    expires_at=expires_at, deployment_id=dep_id, model_version=model.version,
                    task=model.task, code_hash=model.code_hash, weights=blob,
                    cadence_s=target.cadence_s, rules=target.rules, devices=target.devices,
                    rollback=target.rollback,
                )  # fmt: skip
            except ValueError as exc:  # pydantic: a rule too long, too many rules, ...
                raise DeployError(f"bad deploy command: {_first_error(exc)}") from None
            out = [encode(sign(cmd, key, prefix))]
            out += [
                encode(DeployChunk(site=site, session=self.session, job_id=dep_id, index=i,
                                   total=len(parts), sha256=blob.sha256, data=part))
                for i, part in enumerate(parts)
            ]  # fmt: skip
            messages[site] = out
        what = f"{dep_id}: {model.version} ({model.task})" + (
            " rollback" if target.rollback else ""
        )
        store.add_deployment(
            DeploymentRow(
                dep_id, now, model.version, model.task, model.code_hash, target.cadence_s,
                target.rules, target.devices, target.rollback, request.requested_by, expires_at,
            ),
            [
                SiteDeploymentRow(site, dep_id, model.version, model.task, "sent", "", now,
                                  target.previous.get(site, ""), now)
                for site in target.sites
            ],
        )  # fmt: skip
        store.add_events(
            [
                EventRow(site, now, "deployment_sent", None, "sent",
                         f"{what}, {len(parts) or 'no'} chunk(s), expires in "
                         f"{request.expires_s:g} s")
                for site in target.sites
            ]
        )  # fmt: skip
        store.commit()
        infos = {
            site: [self.bus.publish(self.bus.topics.cmd(site, "deploy"), m, 1, False) for m in out]
            for site, out in messages.items()
        }
        outcomes: list[SiteOutcome] = []
        failed: list[SiteDeploymentRow] = []
        for site, site_infos in infos.items():
            why = _unconfirmed(site_infos, 30.0)
            if why:
                failed.append(
                    SiteDeploymentRow(site, dep_id, model.version, model.task, "failed",
                                      f"not published: {why}", now, target.previous.get(site, ""),
                                      now_ms())
                )  # fmt: skip
                outcomes.append(SiteOutcome(site, "failed", f"not published: {why}", dep_id,
                                            model.version))  # fmt: skip
            else:
                outcomes.append(SiteOutcome(site, "sent", "", dep_id, model.version))
        if failed:
            store.save_site_deployments(failed)
            store.commit()
        log.info("deployment %s to %s", what, ", ".join(target.sites))
        return {
            "deployment_id": dep_id, "model_version": model.version, "task": model.task,
            "code_hash": model.code_hash, "sha256": model.sha256, "chunks": len(parts),
            "cadence_s": target.cadence_s, "rules": list(target.rules),
            "devices": list(target.devices), "rollback": target.rollback,
            "expires_at": expires_at, "sites": list(target.sites),
        }, outcomes  # fmt: skip


def _refuse_if(bad: list[SiteOutcome], request: DeployRequest, what: str) -> None:
    """Named sites are all or nothing: one that cannot take it refuses the request."""
    refused = [o for o in bad if o.outcome == "refused"]
    if refused:
        reasons = "; ".join(o.reason for o in refused)
        raise DeployError(f"cannot deploy {what}: {reasons}; nothing sent", "refused", bad)


def _unconfirmed(infos: list[Any], timeout: float) -> str:
    """'' when the broker acknowledged every publish, else why not."""
    deadline = time.monotonic() + timeout
    for info in infos:
        try:
            info.wait_for_publish(max(deadline - time.monotonic(), 0.01))
        except (RuntimeError, ValueError) as exc:  # not queued / disconnected
            return str(exc) or type(exc).__name__
        if not info.is_published():
            return "the broker did not acknowledge it in time"
    return ""


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg')}"
    return str(exc)
