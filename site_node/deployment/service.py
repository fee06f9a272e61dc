"""The deployment controller: the site side of ``fedmq deploy``, plugged into the daemon.

Loaded with the training extension whenever the site config has ``[training]`` (the
allow-list and approval mode are that table's). Command handlers (on the daemon loop) only
enqueue; the controller thread owns the deployment store (:mod:`.store`): it applies the
site's policy (:mod:`.policy`), checks the rules parse, assembles chunked weights and
verifies their sha256, keeps them on disk, waits for the operator in manual mode (the
decision is polled from the store, written by ``fedmq-site approve/reject``), hands the
model to the scoring engine (``site_node.scoring``: ``Scorer.activate(ActiveModel)``) and
reports every state change as a durable ``DeploymentStatus`` on ``P/site/{id}/deployment``:

- accepted -> active (``previous_version``: the version active before; that deployment
  is then reported ``replaced`` "replaced by <id>");
- manual approval: accepted -> pending_approval -> (approve) active, or (reject) rejected
  "rejected by site operator: <reason>";
- rejected "<why>": policy (task not allowed, code hash mismatch, unknown device), a rule
  that does not parse (the parser's message), or a refused command ("command refused:
  unsigned | bad signature | expired N s ago | replayed cmd_id X"; a deployment the site
  already knows keeps its state, the refusal is only its reason);
- failed "<why>": "weights incomplete: N of M chunks missing after T s", "weights fail
  their sha256 ...", "activation failed: <the scoring engine's error>", "site restarted"
  (it was still ``accepted`` when the site stopped: its chunks are gone, deploy again).

At start the active deployment is checked against the site's policy again (the allow-list
may have changed meanwhile), activated again from its weights on disk (re-verified) and
reported ``active`` again with its original ``since``; a deployment pending approval
stays pending (its weights are on disk). The registration and every heartbeat carry the
active ``model_version``; the registration lists the allow-listed tasks with their
pinned code hashes as ``deploy_tasks`` (the coordinator's ``fedmq deploy`` checks them;
``tasks`` lists only those with a hosted dataset, the trainable ones). A deploy with an
id the site knows is not run again: its current state is reported again.
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from schemas import DeployChunk, DeployCommand, DeploymentStatus, TrainChunk, now_ms
from site_node.deployment import policy
from site_node.deployment.store import (
    KEEP_REPLACED,
    DeploymentRecord,
    DeploymentStore,
    deployments_dir,
)
from site_node.sources import SplitSource
from site_node.training.jobs.chunks import ChunkBuffer
from site_node.training.jobs.config import TrainingSettings
from site_node.training.jobs.policy import advertised

if TYPE_CHECKING:
    from site_node.daemon import SiteDaemon

__all__ = ["DeploymentService", "Scoring", "ScoringEngine", "install"]

log = logging.getLogger(__name__)

_TICK_S = 0.5
_REASON_MAX = 500


class ScoringEngine(Protocol):
    """What the controller needs of the scoring engine (``site_node.scoring.Scorer``)."""

    def activate(self, model: Any) -> None: ...

    def deactivate(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Scoring:
    """The scoring engine, its model description type and its rule parser."""

    engine: ScoringEngine
    model: Callable[..., Any]  # ActiveModel(deployment_id=..., weights_path=..., ...)
    parse_rules: Callable[[Sequence[str]], object]  # raises ValueError naming a bad rule


@dataclass(frozen=True)
class _Refused:
    cmd: DeployCommand
    why: str


@dataclass
class _Waiting:
    cmd: DeployCommand
    deadline: float


def install(daemon: SiteDaemon) -> DeploymentService:
    """Daemon extension entry point (``site_node.deployment.service:install``)."""
    if daemon.settings.training is None:
        raise ValueError("site_node.deployment needs a [training] table in the site config")
    service = DeploymentService(daemon, daemon.settings.training, load_scoring(daemon))
    service.start()
    return service


def load_scoring(daemon: SiteDaemon) -> Scoring:
    """The site's scoring engine (``site_node.scoring``), built for ``daemon``; without
    that package every activation fails, saying so."""
    try:
        model = importlib.import_module("site_node.scoring.model")
        rules = importlib.import_module("site_node.scoring.rules")
        service = importlib.import_module("site_node.scoring.service")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("site_node.scoring"):
            raise
        log.warning("no scoring engine (%s): deployments will fail to activate", exc)
        return Scoring(_NoScoring(str(exc)), _Model, lambda _texts: None)
    return Scoring(service.Scorer(daemon), model.ActiveModel, rules.parse_rules)


@dataclass(frozen=True)
class _Model:
    deployment_id: str
    model_version: str
    task: str
    code_hash: str
    weights_path: Path
    cadence_s: float
    rules: tuple[str, ...]
    devices: tuple[str, ...]


class _NoScoring:
    def __init__(self, why: str) -> None:
        self._why = why

    def activate(self, model: Any) -> None:
        raise RuntimeError(f"this site has no scoring engine ({self._why})")

    def deactivate(self) -> None:
        pass

    def close(self) -> None:
        pass


class DeploymentService:
    """See the module docstring."""

    def __init__(
        self,
        daemon: SiteDaemon,
        training: TrainingSettings,
        scoring: Scoring,
        keep_replaced: int = KEEP_REPLACED,
    ) -> None:
        self._d = daemon
        self._t = training
        self._s = scoring
        self._keep = keep_replaced
        self._dir = deployments_dir(daemon.settings.data_dir)
        self._q: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._main, name="site-deployments", daemon=True)
        self._stop = threading.Event()
        self.booted = threading.Event()  # the stored active deployment was re-activated
        # Owned by the controller thread:
        self._chunks = ChunkBuffer(training.max_buffered_bytes)
        self._waiting: dict[str, _Waiting] = {}
        self._refusals: deque[float] = deque()
        # Read by the daemon loop (replaced whole):
        self._active_version: str | None = None

    # -- daemon side (daemon loop thread) -------------------------------------------

    def start(self) -> None:
        d = self._d
        d.register_command("deploy", lambda m, _r: self._q.put(m))
        d.register_command("deploy_chunk", lambda m, _r: self._q.put(m))
        d.register_refusal(self._on_refused, kinds=("deploy",))
        d.set_registration_extra(self._registration_extra)
        d.set_heartbeat_extra(self._extra)
        d.on_stop(self.stop)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        try:
            self._s.engine.close()
        except Exception:
            log.exception("scoring engine failed to close")

    @property
    def active_version(self) -> str | None:
        return self._active_version

    def _extra(self) -> dict[str, Any]:
        return {"model_version": self._active_version}

    def _registration_extra(self) -> dict[str, Any]:
        # Deployable with or without a dataset (``tasks`` lists the trainable ones).
        offers = advertised(self._t)
        return {
            **self._extra(),
            "deploy_tasks": tuple(offers[n] for n in self._t.allow if n in offers),
        }

    def _on_refused(self, cmd: BaseModel, _raw: bytes, why: str) -> None:
        if isinstance(cmd, DeployCommand):
            self._q.put(_Refused(cmd, why))

    # -- controller thread --------------------------------------------------------------

    def _main(self) -> None:
        self._store = DeploymentStore(self._dir)
        try:
            try:
                self._boot()
            finally:
                self.booted.set()
            next_tick = 0.0
            while not self._stop.is_set():
                try:
                    item: object | None = self._q.get(timeout=_TICK_S)
                except queue.Empty:
                    item = None
                if item is not None:
                    try:
                        self._handle(item)
                    except Exception:
                        log.exception("deployment controller failed on %s", type(item).__name__)
                if time.monotonic() >= next_tick:
                    try:
                        self._tick()
                    except Exception:
                        log.exception("deployment controller tick failed")
                    next_tick = time.monotonic() + _TICK_S
        finally:
            self._store.close()

    def _boot(self) -> None:
        for rec in self._store.in_state("accepted"):
            log.warning("deployment %s was accepted when the site stopped: failed",
                        rec.deployment_id)  # fmt: skip
            self._report(self._store.set_state(rec.deployment_id, "failed", "site restarted"))
        active = self._store.active()
        if active is not None:
            sha = active.weights_sha256
            # The site's policy may have changed while it was down (allow-list, pins,
            # devices): it is applied again, as to a new deployment.
            why = self._policy_now(active)
            if why is not None:
                why = f"no longer allowed at site start: {why}"
                log.warning("deployment %s %s", active.deployment_id, why)
                self._report(self._store.set_state(active.deployment_id, "failed", why))
            elif sha is None or not self._store.weights_ok(sha):
                why = "weights file missing or corrupt at site start"
                self._report(self._store.set_state(active.deployment_id, "failed", why))
            else:
                try:
                    self._s.engine.activate(self._model(active))
                except Exception as exc:
                    log.warning("deployment %s not re-activated: %s", active.deployment_id, exc)
                    why = f"activation failed at site start: {exc}"
                    self._report(self._store.set_state(active.deployment_id, "failed", why))
                else:
                    log.info("deployment %s (model %s) active again",
                             active.deployment_id, active.model_version)  # fmt: skip
                    self._set_active(active.model_version)
                    self._report(active, reason="re-activated at site start")
        self._store.prune(self._keep)

    def _handle(self, item: object) -> None:
        if isinstance(item, DeployCommand):
            self._on_deploy(item)
        elif isinstance(item, DeployChunk):
            self._on_chunk(item)
        elif isinstance(item, _Refused):
            self._on_refusal(item)

    def _tick(self) -> None:
        now = time.monotonic()
        for deployment_id, w in list(self._waiting.items()):
            if now >= w.deadline:
                missing = self._chunks.missing(deployment_id, w.cmd.weights)
                self._chunks.discard(deployment_id)
                self._fail(
                    deployment_id,
                    f"weights incomplete: {len(missing)} of {w.cmd.weights.chunks} chunks "
                    f"missing after {self._t.chunk_timeout_s:g} s",
                )
        for rec in self._store.decisions():
            why = self._policy_now(rec) if rec.decision == "approve" else None
            if why is not None:  # the site's policy changed while it waited (a restart)
                log.warning("approved deployment %s no longer allowed: %s", rec.deployment_id, why)
                self._report(self._store.set_state(rec.deployment_id, "rejected", why))
                self._store.prune(self._keep)
            elif rec.decision == "approve":
                log.info("operator approved deployment %s", rec.deployment_id)
                self._activate(rec)
            else:
                why = f"rejected by site operator: {rec.decision_reason or 'no reason given'}"
                log.info("operator rejected deployment %s", rec.deployment_id)
                self._report(self._store.set_state(rec.deployment_id, "rejected", why))
                self._store.prune(self._keep)

    # -- commands ----------------------------------------------------------------------

    def _on_deploy(self, cmd: DeployCommand) -> None:
        known = self._store.get(cmd.deployment_id)
        if known is not None:
            log.info("deployment %s already known (%s): not run again",
                     cmd.deployment_id, known.state)  # fmt: skip
            self._report(known)
            return
        why = policy.refusal(cmd, self._t, *self._devices()) or self._rules_refusal(cmd)
        if why is not None:
            log.warning("deployment %s rejected: %s", cmd.deployment_id, why)
            self._report(self._add(cmd, "rejected", why))
            return
        self._report(self._add(cmd, "accepted"))
        blob = cmd.weights
        if blob.data is None and blob.chunks == 0:
            self._fail(cmd.deployment_id, "weights missing: neither inline nor in chunks")
            return
        if blob.data is not None:
            try:
                raw = blob.inline_bytes()
            except ValueError:
                self._fail(cmd.deployment_id, _sha_failure(cmd))
                return
            assert raw is not None
            self._weights_ready(cmd, raw)
            return
        self._waiting[cmd.deployment_id] = _Waiting(cmd, time.monotonic() + self._t.chunk_timeout_s)
        self._try_chunks(cmd.deployment_id)

    def _rules_refusal(self, cmd: DeployCommand) -> str | None:
        try:
            self._s.parse_rules(cmd.rules)
        except ValueError as exc:
            return str(exc) or "a rule does not parse"
        return None

    def _policy_now(self, rec: DeploymentRecord) -> str | None:
        """Why the site's policy refuses a stored deployment now (None: it allows it)."""
        cmd = DeployCommand.model_validate_json(rec.command)
        return policy.refusal(cmd, self._t, *self._devices())

    def _devices(self) -> tuple[set[str], bool]:
        """The devices this site streams, and whether a source may still find more."""
        names: set[str] = set()
        more = False
        for src, cfg in zip(self._d.sources, self._d.settings.devices, strict=True):
            if isinstance(src, SplitSource):
                names.update(src.devices())  # a plain file source lists its one device
                more = more or getattr(cfg, "device_column", None) is not None
            else:
                names.add(src.device)
        return names, more

    def _on_chunk(self, chunk: DeployChunk) -> None:
        self._chunks.add(_as_chunk(chunk))
        if chunk.job_id in self._waiting:
            self._try_chunks(chunk.job_id)

    def _try_chunks(self, deployment_id: str) -> None:
        w = self._waiting[deployment_id]
        try:
            raw = self._chunks.try_assemble(deployment_id, w.cmd.weights)
        except ValueError:
            self._chunks.discard(deployment_id)
            self._fail(deployment_id, _sha_failure(w.cmd))
            return
        if raw is not None:
            del self._waiting[deployment_id]
            self._weights_ready(w.cmd, raw)

    def _weights_ready(self, cmd: DeployCommand, raw: bytes) -> None:
        try:
            self._store.write_weights(raw, cmd.weights.sha256)
        except (OSError, ValueError) as exc:
            self._fail(cmd.deployment_id, f"weights could not be stored: {exc}")
            return
        self._store.set_weights(cmd.deployment_id, cmd.weights.sha256)
        if self._t.approval == "manual":
            log.info("deployment %s waits for the operator's approval", cmd.deployment_id)
            self._report(self._store.set_state(cmd.deployment_id, "pending_approval"))
            return
        rec = self._store.get(cmd.deployment_id)
        assert rec is not None
        self._activate(rec)

    def _activate(self, rec: DeploymentRecord) -> None:
        sha = rec.weights_sha256
        if sha is None or not self._store.weights_ok(sha):
            self._fail(rec.deployment_id, "weights file missing or corrupt")
            return
        try:
            self._s.engine.activate(self._model(rec))
        except Exception as exc:
            log.warning("deployment %s failed to activate: %s", rec.deployment_id, exc)
            self._fail(rec.deployment_id, f"activation failed: {exc}")
            return
        active, replaced = self._store.activate(rec.deployment_id)
        log.info("deployment %s active: model %s (previous %s)",
                 active.deployment_id, active.model_version,
                 active.previous_version or "none")  # fmt: skip
        self._set_active(active.model_version)
        self._report(active)
        if replaced is not None:
            self._report(replaced)
        self._store.prune(self._keep)

    def _on_refusal(self, item: _Refused) -> None:
        cmd = item.cmd
        now = time.monotonic()
        while self._refusals and now - self._refusals[0] > 60:
            self._refusals.popleft()
        if len(self._refusals) >= self._t.max_refusal_reports_per_min:
            log.warning("refusal for deployment %s not reported (rate limit)", cmd.deployment_id)
            return
        self._refusals.append(now)
        why = f"command refused: {item.why}"
        known = self._store.get(cmd.deployment_id)
        if known is not None:
            # Never overwrite a real deployment's state with a forged or replayed command.
            self._report(known, reason=why)
        else:
            self._send(_status_fields(cmd), "rejected", why, None)

    # -- helpers -------------------------------------------------------------------------

    def _add(self, cmd: DeployCommand, state: str, reason: str = "") -> DeploymentRecord:
        return self._store.add(
            cmd.deployment_id, cmd.model_version, cmd.task, cmd.code_hash, state,
            _command_json(cmd), reason[:_REASON_MAX],
        )  # fmt: skip

    def _fail(self, deployment_id: str, why: str) -> None:
        self._waiting.pop(deployment_id, None)
        log.warning("deployment %s failed: %s", deployment_id, why)
        self._report(self._store.set_state(deployment_id, "failed", why[:_REASON_MAX]))
        self._store.prune(self._keep)

    def _set_active(self, version: str | None) -> None:
        if version != self._active_version:
            self._active_version = version
            d = self._d
            d.call_soon(lambda: d.announce() if d.bus.connected else None)

    def _model(self, rec: DeploymentRecord) -> Any:
        assert rec.weights_sha256 is not None
        f = rec.fields
        return self._s.model(
            deployment_id=rec.deployment_id,
            model_version=rec.model_version,
            task=rec.task,
            code_hash=rec.code_hash,
            weights_path=Path(self._store.weights_path(rec.weights_sha256)),
            cadence_s=float(f.get("cadence_s", 10.0)),
            rules=tuple(f.get("rules", ())),
            devices=tuple(f.get("devices", ())),
        )

    def _report(self, rec: DeploymentRecord, reason: str | None = None) -> None:
        fields = {
            **_status_fields(DeployCommand.model_validate_json(rec.command)),
            "previous_version": rec.previous_version,
        }
        self._send(fields, rec.state, rec.reason if reason is None else reason, rec.since_ms)

    def _send(self, fields: dict[str, Any], state: str, reason: str, since: int | None) -> None:
        d = self._d
        site, session = d.site_id, d.session
        when = now_ms() if since is None else since
        d.send_durable(
            "deployment",
            d.topics.deployment(site),
            lambda seq: DeploymentStatus.model_validate(
                {"site": site, "session": session, "seq": seq, "state": state,
                 "reason": reason[:_REASON_MAX], "since": when, **fields}
            ),
        )  # fmt: skip


def _status_fields(cmd: DeployCommand) -> dict[str, Any]:
    return {
        "deployment_id": cmd.deployment_id,
        "model_version": cmd.model_version,
        "task": cmd.task,
        "code_hash": cmd.code_hash,
        "devices": cmd.devices,
        "cadence_s": cmd.cadence_s,
        "rules": cmd.rules,
        "rollback": cmd.rollback,
    }


def _sha_failure(cmd: DeployCommand) -> str:
    w = cmd.weights
    return (
        f"weights fail their sha256: the assembled weights do not match the signed "
        f"command's {w.size} bytes with sha256 {w.sha256}"
    )


def _as_chunk(chunk: DeployChunk) -> TrainChunk:
    """The chunk buffer's message type, with the same fields (no copy of the data)."""
    return TrainChunk.model_construct(
        site=chunk.site, session=chunk.session, job_id=chunk.job_id, index=chunk.index,
        total=chunk.total, sha256=chunk.sha256, data=chunk.data,
    )  # fmt: skip


def _command_json(cmd: DeployCommand) -> str:
    # The weights live in their own file; the command without their data is small.
    return cmd.model_copy(
        update={"weights": cmd.weights.model_copy(update={"data": None})}
    ).model_dump_json()
