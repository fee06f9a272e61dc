"""The site's PySyft 0.9.5 datasite: private data as a syft asset, jobs as code requests.

The datasite runs in-process (``sy.orchestra.launch`` without a port: nothing listens).
Its state (syft's SQLite store and blob files) lives under ``<data_dir>/syft`` and is kept
across restarts. The root password is generated at first start, stored with mode 0600 and
replaces syft's default at once. The coordinator's jobs are submitted by a non-admin
data-scientist user; the site admin approves or rejects them. Each job is a code request
whose source embeds the job id, task, code hash, hyperparameters and the sha256 of the
global weights, so every request is distinct (syft refuses identical code twice) and the
admin reviews exactly what will run. syft is imported on first use only.

Errors::

    DatasiteError
      +-- JobNotFoundError
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from site_node.job_body import PROGRESS, execute_job, mock_like

__all__ = [
    "DS_EMAIL",
    "ROOT_EMAIL",
    "Datasite",
    "DatasiteError",
    "HostedDataset",
    "JobNotFoundError",
    "execute_job",
    "read_hosted",
]

log = logging.getLogger(__name__)

ROOT_EMAIL = "info@openmined.org"  # syft's root account; only its password is ours
DS_EMAIL = "coordinator@fedmq.example.com"
_SYFT_DEFAULT_PASSWORD = "changethis"


class DatasiteError(RuntimeError):
    """A datasite operation failed (the reason is in the message)."""


class JobNotFoundError(DatasiteError):
    """No code request was submitted for that job id."""


@dataclass(frozen=True)
class HostedDataset:
    name: str
    task: str
    rows: int
    columns: tuple[str, ...]
    paths: tuple[str, ...]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # syft prints progress and banners to stdout; keep the site's stdout clean.
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    if buf.getvalue().strip():
        log.debug("syft: %s", buf.getvalue().strip()[:500])


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    os.chmod(path, 0o600)


def _func_name(job_id: str) -> str:
    return "fedmq_job_" + re.sub(r"[^A-Za-z0-9_]", "_", job_id)


class Datasite:
    """A running in-process datasite with an admin and a data-scientist client."""

    def __init__(self, state_dir: Path, handle: Any, admin: Any, ds: Any) -> None:
        self.state_dir = state_dir
        self._handle = handle
        self.admin = admin
        self.ds = ds
        self.timings: dict[str, float] = {}
        # Per-job syft calls run between a job's "accepted" and "running": the request UIDs
        # this process submitted and the dataset assets spare a listing of every request
        # (one RPC per request for its code, growing each round) and a dataset fetch per job.
        self._request_ids: dict[str, Any] = {}
        self._assets: dict[str, Any] = {}

    @classmethod
    def open(cls, data_dir: Path | str, name: str) -> Datasite:
        """Start (or restart) the datasite whose state is under ``data_dir/syft``."""
        state = Path(data_dir).resolve() / "syft"
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        (state / "jobs").mkdir(exist_ok=True, mode=0o700)
        timings = {}
        t0 = time.perf_counter()
        with _quiet():
            import syft as sy
        timings["import_s"] = time.perf_counter() - t0
        # An absolute SYFT_TEMP_ROOT replaces syft's /tmp/syft: db and blobs go under state.
        os.environ["SYFT_TEMP_ROOT"] = str(state / "server")
        t0 = time.perf_counter()
        root = logging.getLogger()
        level = root.level
        with _quiet():
            handle = sy.orchestra.launch(name=name, reset=False, dev_mode=False)
        # syft sets the root logger to CRITICAL, which would silence the whole site daemon.
        root.setLevel(level)
        logging.getLogger("syft").setLevel(max(level, logging.WARNING))
        timings["launch_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        admin = cls._login_admin(handle, state / "root_password")
        ds = cls._login_ds(handle, admin, state / "ds_password")
        timings["login_s"] = time.perf_counter() - t0
        site = cls(state, handle, admin, ds)
        site.timings.update(timings)
        log.info("datasite %s open in %s: %s", name, state, timings)
        return site

    @staticmethod
    def _login_admin(handle: Any, pw_file: Path) -> Any:
        if pw_file.exists():
            with contextlib.suppress(Exception), _quiet():
                return handle.login(email=ROOT_EMAIL, password=pw_file.read_text())
        # First start, or a crash between saving the password and setting it.
        password = secrets.token_urlsafe(24)
        _write_secret(pw_file, password)
        try:
            with _quiet():
                admin = handle.login(email=ROOT_EMAIL, password=_SYFT_DEFAULT_PASSWORD)
                admin.account.set_password(password, confirm=False)
                return handle.login(email=ROOT_EMAIL, password=password)
        except Exception as exc:
            raise DatasiteError(f"cannot log in as the datasite admin: {exc}") from exc

    @staticmethod
    def _login_ds(handle: Any, admin: Any, pw_file: Path) -> Any:
        if pw_file.exists():
            with contextlib.suppress(Exception), _quiet():
                return handle.login(email=DS_EMAIL, password=pw_file.read_text())
        password = secrets.token_urlsafe(24)
        _write_secret(pw_file, password)
        with _quiet():
            existing = [u for u in admin.users.get_all() if u.email == DS_EMAIL]
            if existing:  # password file lost: reset the account's password
                admin.users.update(uid=existing[0].id, password=password)
            else:
                admin.users.create(
                    name="fedmq coordinator", email=DS_EMAIL, password=password,
                    password_verify=password, role=_data_scientist_role(),
                )  # fmt: skip
            return handle.login(email=DS_EMAIL, password=password)

    def close(self) -> None:
        with _quiet(), contextlib.suppress(Exception):
            self._handle.land()

    # -- data ------------------------------------------------------------------------

    def _registry(self) -> dict[str, dict[str, Any]]:
        path = self.state_dir / "datasets.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def host_dataset(
        self,
        name: str,
        task_name: str,
        data_paths: Sequence[str | Path],
        params: Mapping[str, Any] | None = None,
    ) -> HostedDataset:
        """Upload the task's private table from ``data_paths`` with a same-shape mock.

        Idempotent by name: a dataset already hosted under ``name`` is returned as is.
        """
        import syft as sy

        from site_node.tasks import get_task

        registry = self._registry()
        if name in registry:
            return _hosted(name, registry[name])
        task = get_task(task_name)
        table = task.read_table([str(p) for p in data_paths], dict(params or {}))
        entry = {
            "task": task_name,
            "rows": len(table),
            "columns": [str(c) for c in table.columns],
            "paths": [str(Path(p).resolve()) for p in data_paths],
            "params": dict(params or {}),
        }
        dataset = sy.Dataset(
            name=name,
            description=f"fedmq {task_name} private rows ({len(table)})",
            asset_list=[sy.Asset(name="data", data=table, mock=mock_like(table))],
        )
        with _quiet():
            self.admin.upload_dataset(dataset)
        registry[name] = entry
        (self.state_dir / "datasets.json").write_text(json.dumps(registry, indent=1))
        return _hosted(name, entry)

    def list_datasets(self) -> list[HostedDataset]:
        """Datasets hosted by this datasite (and registered by fedmq)."""
        with _quiet():
            in_syft = {d.name for d in self.admin.datasets.get_all()}
        return [_hosted(n, e) for n, e in sorted(self._registry().items()) if n in in_syft]

    def dataset_for(self, task_name: str) -> str:
        for name, entry in sorted(self._registry().items()):
            if entry["task"] == task_name:
                return name
        raise DatasiteError(f"no dataset hosted for task {task_name!r}")

    # -- jobs ------------------------------------------------------------------------

    def submit_job(
        self,
        job_id: str,
        task_name: str,
        global_weights: bytes | None,
        hyperparams: Mapping[str, Any],
        dataset: str | None = None,
    ) -> Any:
        """Submit the job as the data scientist; returns the pending syft Request."""
        import syft as sy

        from site_node.tasks import get_task

        task = get_task(task_name)
        dataset = dataset or self.dataset_for(task_name)
        job_dir = self.state_dir / "jobs" / _func_name(job_id)
        job_dir.mkdir(exist_ok=True, mode=0o700)
        spec: dict[str, Any] = {
            "job_id": job_id,
            "dataset": dataset,
            "task": task_name,
            "code_hash": task.code_hash,
            "hyperparams": dict(hyperparams),
            "load_params": self._registry()[dataset].get("params", {}),
            "weights_file": None,
            "weights_sha256": None,
        }
        if global_weights is not None:
            wpath = job_dir / "global.npz"
            wpath.write_bytes(global_weights)
            spec["weights_file"] = str(wpath)
            spec["weights_sha256"] = hashlib.sha256(global_weights).hexdigest()
        (job_dir / "spec.json").write_text(json.dumps(spec, sort_keys=True))
        fname = _func_name(job_id)
        source = (
            f"def {fname}(data):\n"
            "    from site_node.job_body import execute_job\n"
            f"    return execute_job({json.dumps(spec, sort_keys=True)!r}, data)\n"
        )
        code_file = job_dir / f"{fname}.py"
        code_file.write_text(source)
        mod_spec = importlib.util.spec_from_file_location(fname, code_file)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        with _quiet():
            asset = self._asset(dataset)
            func = sy.syft_function_single_use(data=asset)(getattr(module, fname))
            request = self.ds.code.request_code_execution(func, reason=f"fedmq job {job_id}")
        if isinstance(request, sy.SyftError):
            raise DatasiteError(f"job {job_id} not submitted: {request.message}")
        self._request_ids[job_id] = request.id
        return request

    def _asset(self, dataset: str) -> Any:
        """The data scientist's pointer to ``dataset``'s asset (fetched once per process)."""
        asset = self._assets.get(dataset)
        if asset is None:
            asset = self._assets[dataset] = self.ds.datasets[dataset].assets[0]
        return asset

    def _request(self, job_id: str) -> Any:
        """The job's request as the admin sees it (by UID when this process submitted it)."""
        uid = self._request_ids.get(job_id)
        if uid is not None:
            with _quiet():
                request = self.admin.api.services.request.get_by_uid(uid)
            if type(request).__name__ != "SyftError":
                return request
        fname = _func_name(job_id)
        with _quiet():
            for request in self.admin.requests:
                code = getattr(request, "code", None)
                if code is not None and getattr(code, "service_func_name", None) == fname:
                    self._request_ids[job_id] = request.id
                    return request
        raise JobNotFoundError(f"no request for job {job_id!r}")

    def has_job(self, job_id: str) -> bool:
        """Whether the job's code request was submitted to this datasite."""
        if job_id in self._request_ids:
            return True
        if not (self.state_dir / "jobs" / _func_name(job_id)).exists():
            return False  # submit_job creates the folder before it submits
        try:
            self._request(job_id)
        except JobNotFoundError:
            return False
        return True

    def job_state(self, job_id: str) -> str:
        """``pending``, ``approved`` or ``rejected`` (syft's request status, lower case)."""
        return str(self._request(job_id).status.name).lower()

    def approve(self, job_id: str) -> None:
        """Approve the job's request as the site admin."""
        uid = self._request_ids.get(job_id) or self._request(job_id).id
        # What Request.approve() sends, without its warnings' metadata and code fetches:
        # fedmq's requests hold one code change and the datasite is not a low-side copy.
        with _quiet():
            result = self.admin.api.services.request.apply(uid)
        _raise_on_error(result, f"approve {job_id}")

    def reject(self, job_id: str, reason: str) -> None:
        with _quiet():
            result = self._request(job_id).deny(reason=reason)
        _raise_on_error(result, f"reject {job_id}")

    def run(
        self, job_id: str, progress: Callable[[float], None] | None = None
    ) -> tuple[bytes, int, dict[str, float]]:
        """Run an approved job on the private asset as the data scientist."""
        fname = _func_name(job_id)
        dataset = self._job_spec(job_id)["dataset"]
        if progress is not None:
            PROGRESS[job_id] = progress
        try:
            with _quiet():
                asset = self._asset(dataset)
                fn = getattr(self.ds.code, fname)
                out = fn(data=asset)
                value = out.get() if hasattr(out, "get") else out
        except Exception as exc:
            trace = getattr(exc, "_server_trace", "") or getattr(exc, "server_trace", "")
            log.error("job %s failed in syft: %s %s", job_id, exc, trace)
            raise DatasiteError(f"job {job_id} failed: {exc}") from exc
        finally:
            PROGRESS.pop(job_id, None)
        _raise_on_error(value, f"run {job_id}")
        if isinstance(value, dict) and "error" in value:
            raise DatasiteError(f"job {job_id} failed: {value['error']}")
        if not isinstance(value, dict) or "weights" not in value:
            raise DatasiteError(f"job {job_id} returned {type(value).__name__}, not a result")
        return bytes(value["weights"]), int(value["n_samples"]), dict(value["metrics"])

    def _job_spec(self, job_id: str) -> dict[str, Any]:
        path = self.state_dir / "jobs" / _func_name(job_id) / "spec.json"
        if not path.exists():
            raise JobNotFoundError(f"no job {job_id!r} submitted at this site")
        return dict(json.loads(path.read_text()))


def read_hosted(data_dir: Path | str) -> list[HostedDataset]:
    """Datasets fedmq hosted in the datasite under ``data_dir``, from its local registry.

    Reads a JSON file only (no syft): for ``fedmq-site data list`` while the daemon runs.
    """
    path = Path(data_dir) / "syft" / "datasets.json"
    if not path.exists():
        return []
    registry = json.loads(path.read_text())
    return [_hosted(name, entry) for name, entry in sorted(registry.items())]


def _raise_on_error(value: Any, what: str) -> None:
    if type(value).__name__ == "SyftError":
        raise DatasiteError(f"{what}: {getattr(value, 'message', value)}")


def _data_scientist_role() -> Any:
    from syft.service.user.user_roles import ServiceRole

    return ServiceRole.DATA_SCIENTIST


def _hosted(name: str, entry: Mapping[str, Any]) -> HostedDataset:
    return HostedDataset(
        name=name,
        task=str(entry["task"]),
        rows=int(entry["rows"]),
        columns=tuple(entry["columns"]),
        paths=tuple(entry["paths"]),
    )
