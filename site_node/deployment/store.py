"""The site's deployment store: one SQLite file (WAL) and the weights files beside it.

Layout under ``data_dir/deployments/`` (folder 0700, files 0600)::

    deployments.db        one row per deployment the site received (not refused commands)
    <sha256>.npz          the weights, named by their sha256, written atomically

The daemon's deployment controller thread owns its connection and writes states; the
CLI (``fedmq-site approve / reject``) opens its own short-lived connection and writes only
an operator *decision* on a deployment that is ``pending_approval``; the controller polls
for decisions and acts on them. A pending deployment's weights are on disk, so it survives
a restart. At most one deployment is ``active``. Weights files are kept for the active
deployment, the pending ones and the :data:`KEEP_REPLACED` most recently replaced (the
versions a rollback returns to); :meth:`DeploymentStore.prune` deletes the others.

Errors::

    DeploymentStoreError
      +-- UnknownDeploymentError
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import now_ms

__all__ = [
    "DB_FILE",
    "DEPLOYMENTS_DIR",
    "KEEP_RECORDS",
    "KEEP_REPLACED",
    "TERMINAL_STATES",
    "DeploymentRecord",
    "DeploymentStore",
    "DeploymentStoreError",
    "UnknownDeploymentError",
    "deployments_dir",
]

DEPLOYMENTS_DIR = "deployments"
DB_FILE = "deployments.db"
KEEP_REPLACED = 3
"""Replaced deployments whose weights stay on disk (newest first)."""
KEEP_RECORDS = 1000
"""Rows kept in the store; older finished ones are deleted by :meth:`DeploymentStore.prune`."""

TERMINAL_STATES = frozenset({"rejected", "failed", "replaced"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    deployment_id TEXT PRIMARY KEY,
    model_version TEXT NOT NULL,
    task TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    received_ms INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    previous_version TEXT NOT NULL DEFAULT '',
    weights_sha256 TEXT,
    command TEXT NOT NULL,
    decision TEXT,
    decision_reason TEXT
)
"""


class DeploymentStoreError(RuntimeError):
    """A deployment store operation is not possible (the message says why)."""


class UnknownDeploymentError(DeploymentStoreError):
    """No deployment with that id at this site."""


def deployments_dir(data_dir: Path) -> Path:
    """Where a site keeps its deployments (``data_dir/deployments``)."""
    return Path(data_dir) / DEPLOYMENTS_DIR


@dataclass(frozen=True)
class DeploymentRecord:
    deployment_id: str
    model_version: str
    task: str
    code_hash: str
    state: str
    reason: str
    received_ms: int
    since_ms: int
    previous_version: str
    weights_sha256: str | None
    command: str
    decision: str | None
    decision_reason: str | None

    @property
    def fields(self) -> dict[str, Any]:
        """The command's own fields (cadence_s, rules, devices, rollback, ...)."""
        return dict(json.loads(self.command))

    def as_dict(self) -> dict[str, Any]:
        """The record for ``--json`` output (without the command payload)."""
        f = self.fields
        return {
            "deployment": self.deployment_id,
            "model_version": self.model_version,
            "task": self.task,
            "state": self.state,
            "since_ms": self.since_ms,
            "received_ms": self.received_ms,
            "reason": self.reason,
            "previous_version": self.previous_version,
            "devices": list(f.get("devices", ())),
            "cadence_s": f.get("cadence_s"),
            "rules": list(f.get("rules", ())),
            "rollback": bool(f.get("rollback", False)),
        }


_COLUMNS = (
    "deployment_id, model_version, task, code_hash, state, reason, received_ms, since_ms, "
    "previous_version, weights_sha256, command, decision, decision_reason"
)


class DeploymentStore:
    """Deployments of one site; use from one thread per instance."""

    def __init__(self, directory: Path, create: bool = True) -> None:
        self.dir = Path(directory)
        self.path = self.dir / DB_FILE
        if not create and not self.path.exists():
            raise UnknownDeploymentError(f"no deployments at this site yet ({self.path})")
        if not self.dir.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.chmod(self.dir, 0o700)
        fresh = not self.path.exists()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        if fresh:
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)

    def close(self) -> None:
        self._db.close()

    # -- daemon side -----------------------------------------------------------------

    def add(
        self,
        deployment_id: str,
        model_version: str,
        task: str,
        code_hash: str,
        state: str,
        command: str,
        reason: str = "",
    ) -> DeploymentRecord:
        """Insert a new deployment; DeploymentStoreError if the id exists."""
        now = now_ms()
        try:
            self._db.execute(
                f"INSERT INTO deployments ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', NULL, ?, NULL, NULL)",
                (deployment_id, model_version, task, code_hash, state, reason, now, now,
                 command),
            )  # fmt: skip
        except sqlite3.IntegrityError:
            raise DeploymentStoreError(f"deployment {deployment_id} exists") from None
        record = self.get(deployment_id)
        assert record is not None
        return record

    def set_state(
        self,
        deployment_id: str,
        state: str,
        reason: str = "",
        previous_version: str | None = None,
    ) -> DeploymentRecord:
        """Move a deployment to ``state`` (``since`` is now); returns the new record."""
        if previous_version is None:
            self._db.execute(
                "UPDATE deployments SET state = ?, reason = ?, since_ms = ? "
                "WHERE deployment_id = ?",
                (state, reason, now_ms(), deployment_id),
            )
        else:
            self._db.execute(
                "UPDATE deployments SET state = ?, reason = ?, since_ms = ?, "
                "previous_version = ? WHERE deployment_id = ?",
                (state, reason, now_ms(), previous_version, deployment_id),
            )
        record = self.get(deployment_id)
        if record is None:
            raise UnknownDeploymentError(f"unknown deployment {deployment_id!r}")
        return record

    def activate(self, deployment_id: str) -> tuple[DeploymentRecord, DeploymentRecord | None]:
        """Make ``deployment_id`` the one active deployment, in one transaction: the one
        active before becomes ``replaced``. Returns (now active, replaced or None)."""
        before = self.active()
        if before is not None and before.deployment_id == deployment_id:
            return before, None
        now = now_ms()
        previous = "" if before is None else before.model_version
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if before is not None:
                self._db.execute(
                    "UPDATE deployments SET state = 'replaced', reason = ?, since_ms = ? "
                    "WHERE deployment_id = ?",
                    (f"replaced by {deployment_id}", now, before.deployment_id),
                )
            self._db.execute(
                "UPDATE deployments SET state = 'active', reason = '', since_ms = ?, "
                "previous_version = ? WHERE deployment_id = ?",
                (now, previous, deployment_id),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        active = self.get(deployment_id)
        assert active is not None
        replaced = None if before is None else self.get(before.deployment_id)
        return active, replaced

    def set_weights(self, deployment_id: str, sha256: str) -> None:
        self._db.execute(
            "UPDATE deployments SET weights_sha256 = ? WHERE deployment_id = ?",
            (sha256, deployment_id),
        )

    def active(self) -> DeploymentRecord | None:
        rows = self._select("WHERE state = 'active' ORDER BY since_ms DESC LIMIT 1")
        return rows[0] if rows else None

    def in_state(self, state: str) -> list[DeploymentRecord]:
        return self._select("WHERE state = ? ORDER BY received_ms, rowid", state)

    def decisions(self) -> list[DeploymentRecord]:
        """Pending deployments on which the operator has decided."""
        return self._select(
            "WHERE state = 'pending_approval' AND decision IS NOT NULL ORDER BY received_ms"
        )

    # -- weights files -----------------------------------------------------------------

    def weights_path(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.npz"

    def write_weights(self, raw: bytes, sha256: str) -> Path:
        """Store verified weights as ``<sha256>.npz`` (0600, atomically); returns the path.

        Raises:
            ValueError: ``raw`` does not hash to ``sha256``.
        """
        if hashlib.sha256(raw).hexdigest() != sha256:
            raise ValueError("weights fail their sha256")
        path = self.weights_path(sha256)
        if self.weights_ok(sha256):
            return path  # the same weights as an earlier deployment (e.g. a rollback)
        tmp = self.dir / f".{sha256}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(self.dir)
        return path

    def weights_ok(self, sha256: str) -> bool:
        """The weights file exists and still hashes to its name."""
        path = self.weights_path(sha256)
        try:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            return False
        return digest.hexdigest() == sha256

    def prune(self, keep_replaced: int = KEEP_REPLACED, keep_records: int = KEEP_RECORDS) -> int:
        """Delete weights no longer needed (see the module docstring) and the oldest
        finished rows beyond ``keep_records``; returns the number of files deleted."""
        self._db.execute(
            "DELETE FROM deployments WHERE state IN ('rejected', 'failed', 'replaced') "
            "AND rowid NOT IN (SELECT rowid FROM deployments "
            "ORDER BY received_ms DESC, rowid DESC LIMIT ?)",
            (keep_records,),
        )
        keep = {
            r.weights_sha256
            for r in self._select("WHERE state IN ('active', 'pending_approval', 'accepted')")
        }
        replaced = self._select("WHERE state = 'replaced' AND weights_sha256 IS NOT NULL "
                                "ORDER BY since_ms DESC, rowid DESC")  # fmt: skip
        keep.update(r.weights_sha256 for r in replaced[: max(0, keep_replaced)])
        deleted = 0
        for path in self.dir.glob("*.npz"):
            if path.stem not in keep:
                with contextlib.suppress(OSError):
                    path.unlink()
                    deleted += 1
        for path in self.dir.glob(".*.tmp"):  # a write cut short by a crash
            with contextlib.suppress(OSError):
                path.unlink()
        gone = [r.deployment_id for r in self._select("WHERE weights_sha256 IS NOT NULL")
                if r.weights_sha256 not in keep]  # fmt: skip
        for deployment_id in gone:
            self._db.execute(
                "UPDATE deployments SET weights_sha256 = NULL WHERE deployment_id = ?",
                (deployment_id,),
            )
        return deleted

    # -- both sides ------------------------------------------------------------------

    def get(self, deployment_id: str) -> DeploymentRecord | None:
        rows = self._select("WHERE deployment_id = ?", deployment_id)
        return rows[0] if rows else None

    def recent(self, limit: int = 200) -> list[DeploymentRecord]:
        """Newest first."""
        return self._select("ORDER BY received_ms DESC, rowid DESC LIMIT ?", limit)

    # -- CLI side --------------------------------------------------------------------

    def decide(self, deployment_id: str, decision: str, reason: str = "") -> DeploymentRecord:
        """Record the operator's ``approve``/``reject`` for a pending deployment.

        Raises:
            UnknownDeploymentError: no such deployment.
            DeploymentStoreError: it is not pending approval (or was decided already).
        """
        if decision not in ("approve", "reject"):
            raise ValueError(f"decision must be approve or reject, not {decision!r}")
        cur = self._db.execute(
            "UPDATE deployments SET decision = ?, decision_reason = ? "
            "WHERE deployment_id = ? AND state = 'pending_approval' AND decision IS NULL",
            (decision, reason, deployment_id),
        )
        record = self.get(deployment_id)
        if record is None:
            raise UnknownDeploymentError(f"unknown deployment {deployment_id!r}")
        if cur.rowcount == 0:
            if record.state == "pending_approval":
                raise DeploymentStoreError(
                    f"deployment {deployment_id} is already decided ({record.decision})"
                )
            raise DeploymentStoreError(
                f"deployment {deployment_id} is {record.state}, not pending approval"
            )
        return record

    def _select(self, where: str, *args: Any) -> list[DeploymentRecord]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM deployments {where}", args).fetchall()
        return [DeploymentRecord(*row) for row in rows]


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync there; NTFS journals renames
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
