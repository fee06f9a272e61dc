"""What a deploy request means before anything is sent: the model, the sites, the settings.

Pure checks on what the coordinator database says (read-only connection): the model
exists and its weights pass their sha256, its run names the task's code hash, each site is
known, registered and advertises that task with that code hash. A rollback finds, per
site, the version that was active before the current one. Nothing here publishes.

Errors are :class:`DeployError` with a one-line message and a code (``usage``,
``not_found``, ``refused``, ``broker``) the control API maps to an HTTP status.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from coordinator.store import DeploymentRow, SiteDeploymentRow, Store, read, training_read

__all__ = [
    "DEFAULT_EXPIRES_S",
    "DeployError",
    "DeployRequest",
    "Model",
    "SiteOutcome",
    "Target",
    "check_sites",
    "previous_version",
    "resolve_model",
]

DEFAULT_EXPIRES_S = 600.0
"""A deploy command expires 10 minutes after it was sent unless asked otherwise."""


class DeployError(Exception):
    """A deploy request that cannot be carried out; nothing was sent.

    ``code``: ``usage`` (bad request, no signing key), ``not_found`` (unknown model),
    ``refused`` (a named site cannot take it: ``sites`` says which and why), ``broker``.
    """

    def __init__(self, message: str, code: str = "usage", sites: list[SiteOutcome] | None = None):
        super().__init__(message)
        self.code = code
        self.sites = sites or []


@dataclass(frozen=True)
class SiteOutcome:
    """What happened to one site of a request: ``sent``, ``refused`` or ``skipped``."""

    site: str
    outcome: str
    reason: str = ""
    deployment_id: str = ""
    model_version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site, "outcome": self.outcome, "reason": self.reason,
            "deployment_id": self.deployment_id, "model_version": self.model_version,
        }  # fmt: skip


@dataclass(frozen=True)
class DeployRequest:
    """A deploy (``model`` set) or a rollback (``rollback`` set, ``model`` None) request.

    ``sites`` or ``all_sites``; ``cadence_s``/``rules``/``devices`` None: the defaults (a
    rollback: those of the deployment that ran the version before); ``expires_s``: how long
    the command stays valid.
    """

    model: str | None = None
    sites: tuple[str, ...] = ()
    all_sites: bool = False
    cadence_s: float | None = None
    rules: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    rollback: bool = False
    expires_s: float = DEFAULT_EXPIRES_S
    requested_by: str = ""

    @classmethod
    def from_json(cls, body: Any) -> DeployRequest:
        """Parse the control API's JSON body; DeployError (usage) for a bad one."""
        if not isinstance(body, dict):
            raise DeployError("the request body must be a JSON object")
        known = {"model", "sites", "all", "cadence_s", "rules", "devices", "rollback",
                 "expires_s", "requested_by"}  # fmt: skip
        unknown = sorted(set(body) - known)
        if unknown:
            raise DeployError(
                f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        model = body.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise DeployError("model: a model version (see `fedmq models`)")
        rollback = bool(body.get("rollback", False))
        if rollback and model:
            raise DeployError("a rollback deploys each site's previous version: give no model")
        if not rollback and not model:
            raise DeployError("model is required (or rollback)")
        sites = _strings(body.get("sites", []), "sites")
        all_sites = bool(body.get("all", False))
        if all_sites == bool(sites):
            raise DeployError("name the sites, or all of them (not both)")
        cadence = body.get("cadence_s")
        if cadence is not None:
            if isinstance(cadence, bool) or not isinstance(cadence, int | float):
                raise DeployError("cadence_s: seconds between scores")
            if not math.isfinite(cadence) or not 0.1 <= cadence <= 86_400:
                raise DeployError("cadence_s: between 0.1 and 86400 seconds")
        expires = body.get("expires_s", DEFAULT_EXPIRES_S)
        if (
            isinstance(expires, bool)
            or not isinstance(expires, int | float)
            or not (1 <= expires <= 7 * 86_400)
        ):
            raise DeployError("expires_s: between 1 s and 7 days")
        rules = body.get("rules")
        devices = body.get("devices")
        return cls(
            model=model, sites=sites, all_sites=all_sites,
            cadence_s=None if cadence is None else float(cadence),
            rules=None if rules is None else _strings(rules, "rules"),
            devices=None if devices is None else _strings(devices, "devices"),
            rollback=rollback, expires_s=float(expires),
            requested_by=str(body.get("requested_by") or "")[:100],
        )  # fmt: skip


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise DeployError(f"{name}: a list of strings")
    return tuple(v.strip() for v in value if v.strip())


@dataclass(frozen=True)
class Model:
    """A stored model version ready to send: weights verified, task and code hash."""

    version: str
    task: str
    code_hash: str
    weights: bytes
    sha256: str


@dataclass
class Target:
    """One deployment to create: a model version to the given sites, with its settings."""

    model: Model
    cadence_s: float
    rules: tuple[str, ...]
    devices: tuple[str, ...]
    rollback: bool
    sites: list[str] = field(default_factory=list)
    previous: dict[str, str] = field(default_factory=dict)  # site -> version active now


def resolve_model(conn: sqlite3.Connection, version: str) -> Model:
    """The model ``version`` (``models.model_id``) with verified weights and its run's code
    hash; DeployError ``not_found``/``refused`` otherwise."""
    row = next((m for m in training_read.models(conn) if m["model_id"] == version), None)
    if row is None:
        raise DeployError(f"unknown model {version} (see `fedmq models`)", "not_found")
    try:
        weights = training_read.model_blob(conn, version)
    except ValueError as exc:
        raise DeployError(str(exc), "refused") from None
    if weights is None:
        raise DeployError(f"model {version} has no weights", "refused")
    run = training_read.run_detail(conn, row["run_id"]) if row.get("run_id") else None
    code_hash = (run or {}).get("code_hash") or ""
    if len(code_hash) != 64:
        raise DeployError(
            f"model {version}: its run {row.get('run_id')} names no task code hash, so no site "
            "could check what code would score with it",
            "refused",
        )
    return Model(version, str(row["task"]), code_hash, weights, str(row["sha256"]))


def check_sites(
    conn: sqlite3.Connection,
    names: tuple[str, ...],
    all_sites: bool,
    task: str,
    code_hash: str,
    version_of: dict[str, str] | None = None,
) -> tuple[list[str], list[SiteOutcome]]:
    """Which sites may get ``task`` at ``code_hash``: (ok, refused). With ``all_sites``,
    every registered site is considered and the others are ``skipped``, not refused."""
    known = {s["site"] for s in read.sites(conn)[0]}
    regs = read.registrations(conn)
    wanted = sorted(regs) if all_sites else list(dict.fromkeys(names))
    ok: list[str] = []
    bad: list[SiteOutcome] = []
    for site in wanted:
        why = _why_not(site, known, regs, task, code_hash)
        if why is None:
            ok.append(site)
        else:
            version = (version_of or {}).get(site, "")
            bad.append(SiteOutcome(site, "skipped" if all_sites else "refused", why,
                                   model_version=version))  # fmt: skip
    return ok, bad


def _why_not(
    site: str, known: set[str], regs: dict[str, Any], task: str, code_hash: str
) -> str | None:
    if site not in known:
        return f"unknown site {site} (never seen by this coordinator; see `fedmq sites`)"
    reg = regs.get(site)
    if reg is None:
        return f"site {site} is deregistered (no registration): it must register again"
    # deploy_tasks: what the site takes deployments of (its allow-list, dataset or not);
    # tasks: what it can train (a site from before deploy_tasks advertises only those).
    every = (*getattr(reg, "deploy_tasks", ()), *reg.tasks)
    offers = [t for t in every if t.name == task]
    if not offers:
        names = ", ".join(sorted({t.name for t in every})) or "none"
        return f"site {site} does not offer task {task} (it offers: {names})"
    if all(t.code_hash != code_hash for t in offers):
        has = ", ".join(dict.fromkeys(t.code_hash[:12] for t in offers))
        return (
            f"site {site} advertises {task} with code hash {has}, not {code_hash[:12]} "
            "(the model's run): update the site's task code, or deploy a model trained with it"
        )
    return None


def current(store: Store, site: str) -> SiteDeploymentRow | None:
    """The deployment active at ``site`` now (the latest activation still active)."""
    return next((r for r in store.deployment_history(site) if r.state == "active"), None)


def previous_version(
    store: Store, site: str
) -> tuple[SiteDeploymentRow, str, DeploymentRow | None]:
    """For a rollback: (the deployment active now, the version active before it, the
    deployment that ran that version, if known). DeployError when there is none."""
    history = store.deployment_history(site)
    now = next((r for r in history if r.state == "active"), None)
    if now is None:
        raise DeployError(f"site {site}: no active deployment to roll back", "refused")
    earlier = history[history.index(now) + 1 :]  # activated before it, latest first
    before = next((r for r in earlier if r.model_version != now.model_version), None)
    if before is not None:
        dep = store.deployments(before.deployment_id)
        return now, before.model_version, dep[0] if dep else None
    if now.previous_version and now.previous_version != now.model_version:
        return now, now.previous_version, None  # reported by the site, before our history
    raise DeployError(
        f"site {site}: no previous version to roll back to (only {now.model_version} has run "
        "there)",
        "refused",
    )
