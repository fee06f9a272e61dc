"""The site's PySyft 0.9.5 datasite: private data as a syft asset, jobs as code requests.

The datasite runs in-process (``sy.orchestra.launch`` without a port: nothing listens).
Its state (syft's SQLite store and blob files) lives under ``<data_dir>/syft`` and is kept
across restarts. The root password is generated at first start, stored with mode 0600 and
replaces syft's default at once. The coordinator's jobs are submitted by a non-admin
data-scientist user; the site admin approves or rejects them. Each job is a code request
whose source embeds the job id, task, code hash, hyperparameters and the sha256 of the
global weights, so every request is distinct (syft refuses identical code twice) and the
admin reviews exactly what will run. With auto approval the site instead keeps a
pre-approved *slot* per task (:meth:`Datasite.prepare_slot`): the same site code, reading
the spec that the site writes into the slot's folder once a job passed its checks, so
syft's submission and approval do not delay the job. syft is imported on first use only.

Errors::

    DatasiteError
      +-- JobNotFoundError
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from site_node.training.datasite_accounts import (
    DS_EMAIL,
    ROOT_EMAIL,
    login_admin,
    login_data_scientist,
    quiet,
)
from site_node.training.hosted import HostedDataset, hosted_entry, load_registry, save_registry
from site_node.training.job_body import PROGRESS, execute_job, mock_like
from site_node.training.job_files import (
    SLOT_PREFIX,
    func_name,
    job_function,
    write_json_atomic,
    write_spec,
)

__all__ = [
    "DS_EMAIL",
    "ROOT_EMAIL",
    "Datasite",
    "DatasiteError",
    "HostedDataset",
    "JobNotFoundError",
    "execute_job",
]

log = logging.getLogger(__name__)


class DatasiteError(RuntimeError):
    """A datasite operation failed (the reason is in the message)."""


class JobNotFoundError(DatasiteError):
    """No code request was submitted for that job id."""


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
        with quiet():
            import syft as sy
        timings["import_s"] = time.perf_counter() - t0
        # An absolute SYFT_TEMP_ROOT replaces syft's /tmp/syft: db and blobs go under state.
        os.environ["SYFT_TEMP_ROOT"] = str(state / "server")
        t0 = time.perf_counter()
        root = logging.getLogger()
        level = root.level
        with quiet():
            handle = sy.orchestra.launch(name=name, reset=False, dev_mode=False)
        # syft sets the root logger to CRITICAL, which would silence the whole site daemon.
        root.setLevel(level)
        logging.getLogger("syft").setLevel(max(level, logging.WARNING))
        timings["launch_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            admin = login_admin(handle, state / "root_password")
        except PermissionError as exc:
            raise DatasiteError(str(exc)) from exc
        ds = login_data_scientist(handle, admin, state / "ds_password")
        timings["login_s"] = time.perf_counter() - t0
        site = cls(state, handle, admin, ds)
        site.timings.update(timings)
        log.info("datasite %s open in %s: %s", name, state, timings)
        return site

    def close(self) -> None:
        with quiet(), contextlib.suppress(Exception):
            self._handle.land()

    # -- data ------------------------------------------------------------------------

    def _registry(self) -> dict[str, dict[str, Any]]:
        return load_registry(self.state_dir)

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

        from site_node.training.tasks import get_task

        registry = self._registry()
        if name in registry:
            return hosted_entry(name, registry[name])
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
        with quiet():
            self.admin.upload_dataset(dataset)
        registry[name] = entry
        save_registry(self.state_dir, registry)
        return hosted_entry(name, entry)

    def list_datasets(self) -> list[HostedDataset]:
        """Datasets hosted by this datasite (and registered by fedmq)."""
        with quiet():
            in_syft = {d.name for d in self.admin.datasets.get_all()}
        return [hosted_entry(n, e) for n, e in sorted(self._registry().items()) if n in in_syft]

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
        dataset = dataset or self.dataset_for(task_name)
        fname = func_name(job_id)
        job_dir = self.state_dir / "jobs" / fname
        spec = self._write_spec(job_dir, job_id, task_name, global_weights, hyperparams, dataset)
        call = (
            "from site_node.training.job_body import execute_job\n"
            f"return execute_job({json.dumps(spec, sort_keys=True)!r}, data)"
        )
        request = self._submit(job_dir, fname, call, dataset, f"fedmq job {job_id}")
        self._request_ids[job_id] = request.id
        return request

    def _write_spec(
        self,
        job_dir: Path,
        job_id: str,
        task_name: str,
        global_weights: bytes | None,
        hyperparams: Mapping[str, Any],
        dataset: str,
    ) -> dict[str, Any]:
        from site_node.training.tasks import get_task

        code_hash = get_task(task_name).code_hash
        load_params = self._registry()[dataset].get("params", {})
        return write_spec(
            job_dir, job_id, task_name, code_hash, dataset, hyperparams, load_params, global_weights
        )

    def _submit(self, job_dir: Path, fname: str, call: str, dataset: str, reason: str) -> Any:
        import syft as sy

        fn = job_function(job_dir, fname, call)
        with quiet():
            func = sy.syft_function_single_use(data=self._asset(dataset))(fn)
            request = self.ds.code.request_code_execution(func, reason=reason)
        if isinstance(request, sy.SyftError):
            raise DatasiteError(f"{reason}: not submitted: {request.message}")
        return request

    # -- pre-approved slots (approval mode auto) --------------------------------------

    def prepare_slot(self, task_name: str, dataset: str | None = None) -> str:
        """Submit and approve, ahead of time, a request for the task's next job.

        The slot's code is the same two lines as a job's, calling
        :func:`site_node.training.job_body.execute_slot` with the slot's folder: it runs nothing
        until :meth:`bind_slot` writes a job's spec there. With auto approval this moves
        syft's submission and approval (0.1-0.4 s per job) off a round's critical path.
        Returns the slot (its function name).
        """
        dataset = dataset or self.dataset_for(task_name)
        slot = SLOT_PREFIX + secrets.token_hex(8)
        slot_dir = self.state_dir / "jobs" / slot
        call = (
            "from site_node.training.job_body import execute_slot\n"
            f"return execute_slot({str(slot_dir)!r}, data)"
        )
        request = self._submit(slot_dir, slot, call, dataset, f"fedmq {task_name} job slot")
        self._apply(request.id, f"approve slot {slot}")
        write_json_atomic(slot_dir / "slot.json", {"task": task_name, "dataset": dataset})
        return slot

    @staticmethod
    def _free_slot_meta(slot_dir: Path) -> dict[str, str] | None:
        """A prepared slot's ``{"task", "dataset"}``, or None if it is taken or unprepared."""
        meta = slot_dir / "slot.json"
        if not meta.is_file() or (slot_dir / "spec.json").exists():
            return None
        return dict(json.loads(meta.read_text()))

    def free_slot(self, task_name: str, dataset: str | None = None) -> str | None:
        """An approved slot for the task and dataset that no job took yet (after restarts)."""
        dataset = dataset or self.dataset_for(task_name)
        wanted = {"task": task_name, "dataset": dataset}
        for slot_dir in sorted((self.state_dir / "jobs").glob(SLOT_PREFIX + "*")):
            if self._free_slot_meta(slot_dir) == wanted:
                return slot_dir.name
        return None

    def bind_slot(
        self,
        slot: str,
        job_id: str,
        task_name: str,
        global_weights: bytes | None,
        hyperparams: Mapping[str, Any],
        dataset: str | None = None,
    ) -> None:
        """Give a free slot to a job the site accepted: :meth:`run` then runs it there."""
        dataset = dataset or self.dataset_for(task_name)
        slot_dir = self.state_dir / "jobs" / slot
        meta = self._free_slot_meta(slot_dir)
        if meta is None:
            raise DatasiteError(f"slot {slot} is not free")
        if meta != {"task": task_name, "dataset": dataset}:
            raise DatasiteError(f"slot {slot} is not for {task_name} on {dataset}")
        job_dir = self.state_dir / "jobs" / func_name(job_id)
        spec = self._write_spec(job_dir, job_id, task_name, global_weights, hyperparams, dataset)
        (job_dir / "slot").write_text(slot)
        write_json_atomic(slot_dir / "spec.json", spec)

    def _function(self, job_id: str) -> str:
        """The syft function that runs the job: its own, or the slot it was bound to."""
        slot = self.state_dir / "jobs" / func_name(job_id) / "slot"
        return slot.read_text() if slot.is_file() else func_name(job_id)

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
            with quiet():
                request = self.admin.api.services.request.get_by_uid(uid)
            if type(request).__name__ != "SyftError":
                return request
        fname = self._function(job_id)
        with quiet():
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
        if not (self.state_dir / "jobs" / func_name(job_id)).exists():
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
        self._apply(uid, f"approve {job_id}")

    def _apply(self, uid: Any, what: str) -> None:
        # What Request.approve() sends, without its warnings' metadata and code fetches:
        # fedmq's requests hold one code change and the datasite is not a low-side copy.
        with quiet():
            result = self.admin.api.services.request.apply(uid)
        _raise_on_error(result, what)

    def reject(self, job_id: str, reason: str) -> None:
        with quiet():
            result = self._request(job_id).deny(reason=reason)
        _raise_on_error(result, f"reject {job_id}")

    def run(
        self, job_id: str, progress: Callable[[float], None] | None = None
    ) -> tuple[bytes, int, dict[str, float]]:
        """Run an approved job on the private asset as the data scientist."""
        fname = self._function(job_id)
        dataset = self._job_spec(job_id)["dataset"]
        if progress is not None:
            PROGRESS[job_id] = progress
        try:
            with quiet():
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
        path = self.state_dir / "jobs" / func_name(job_id) / "spec.json"
        if not path.exists():
            raise JobNotFoundError(f"no job {job_id!r} submitted at this site")
        return dict(json.loads(path.read_text()))


def _raise_on_error(value: Any, what: str) -> None:
    if type(value).__name__ == "SyftError":
        raise DatasiteError(f"{what}: {getattr(value, 'message', value)}")
