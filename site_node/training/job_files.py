"""A job's files under the datasite's state: its spec and its syft function's source.

Every job, and every pre-approved slot (see
:meth:`site_node.training.datasite.Datasite.prepare_slot`),
has a folder ``<state>/jobs/<function name>/`` (mode 0700). ``spec.json`` says what runs:
job id, task, code hash, dataset and its load parameters, hyperparameters, and the global
weights file with its sha256. syft needs a job's function as a real module (it reads the
source), so the source is written next to the spec and imported from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from site_node.training.tasks.registry import TASKS_DIR_ENV

__all__ = [
    "JOB_PREFIX",
    "SLOT_PREFIX",
    "func_name",
    "job_function",
    "write_json_atomic",
    "write_spec",
]

JOB_PREFIX = "fedmq_job_"
SLOT_PREFIX = "fedmq_slot_"


_ESCAPES = {"_": "_u", "-": "_h"}
_LONGEST = 128  # escaped ids longer than this are hashed (file names stop at 255 bytes)


def func_name(job_id: str) -> str:
    """The syft function (and folder) name of a job's own code request.

    One name per job id and never the same for two: ``_`` and ``-`` are escaped (``_u``,
    ``_h``), so ``a-1`` and ``a_1`` get different folders and functions (``-`` is not
    allowed in a Python name). Letters and digits are kept, so a job id without ``_`` or
    ``-`` keeps the folder it had before the escaping. A very long id is named by its
    sha256 under a prefix no escaped name can have.
    """
    escaped = re.sub(r"[_-]", lambda m: _ESCAPES[m.group(0)], job_id)
    if len(escaped) <= _LONGEST and re.fullmatch(r"[A-Za-z0-9_]*", escaped):
        return JOB_PREFIX + escaped
    return JOB_PREFIX + "sha256_" + hashlib.sha256(job_id.encode()).hexdigest()


def write_json_atomic(path: Path, value: Any) -> None:
    """Write ``value`` as JSON so that readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, sort_keys=True))
    os.replace(tmp, path)


def write_spec(
    job_dir: Path,
    job_id: str,
    task_name: str,
    code_hash: str,
    dataset: str,
    hyperparams: Mapping[str, Any],
    load_params: Mapping[str, Any],
    global_weights: bytes | None,
) -> dict[str, Any]:
    """Create ``job_dir`` with the global weights and ``spec.json``; returns the spec."""
    job_dir.mkdir(exist_ok=True, mode=0o700)
    spec: dict[str, Any] = {
        "job_id": job_id,
        "dataset": dataset,
        "task": task_name,
        "code_hash": code_hash,
        "hyperparams": dict(hyperparams),
        "load_params": dict(load_params),
        "weights_file": None,
        "weights_sha256": None,
        # The site's tasks folder, so the job body finds the same task (docs/tasks.md).
        "tasks_dir": os.environ.get(TASKS_DIR_ENV) or None,
    }
    if global_weights is not None:
        wpath = job_dir / "global.npz"
        wpath.write_bytes(global_weights)
        spec["weights_file"] = str(wpath)
        spec["weights_sha256"] = hashlib.sha256(global_weights).hexdigest()
    write_json_atomic(job_dir / "spec.json", spec)
    return spec


def job_function(job_dir: Path, fname: str, call: str) -> Callable[..., Any]:
    """Write ``def fname(data): <call>`` to ``job_dir`` and import it.

    ``call`` is one statement of the form ``from site_node.training.job_body import X`` plus
    ``return X(...)``, joined by a newline; it is indented here.
    """
    job_dir.mkdir(exist_ok=True, mode=0o700)
    body = "".join(f"    {line}\n" for line in call.splitlines())
    code_file = job_dir / f"{fname}.py"
    code_file.write_text(f"def {fname}(data):\n{body}")
    mod_spec = importlib.util.spec_from_file_location(fname, code_file)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return getattr(module, fname)  # type: ignore[no-any-return]
