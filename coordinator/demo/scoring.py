"""The demo's FD001 test RMSE of each round's model, computed where the model code lives.

The coordinator never imports torch or the site's code: the demo exports the round's model
from the database (as ``fedmq models export`` does) and runs ``fedmq-site task evaluate
--json`` on it, the site-side scorer of the task's shipped test set.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from coordinator.demo.startup import _fedmq_argv

__all__ = ["TestSetScorer"]

log = logging.getLogger(__name__)


class TestSetScorer:
    """Scores models of ``db`` into ``out_dir`` (one npz per model); ``stop`` cuts it short."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, db: Path, out_dir: Path, stop: threading.Event, timeout: float = 180.0):
        self.db = db
        self.out_dir = out_dir
        self.stop = stop
        self.timeout = timeout

    def export(self, model_id: str) -> Path:
        """Write the model's sha256-verified npz weights to ``out_dir/<model_id>.npz``."""
        from coordinator.store.read import SqliteReader

        reader = SqliteReader.open(self.db)
        try:
            raw = reader.model_blob(model_id)
        finally:
            reader.close()
        if raw is None:
            raise ValueError(f"no model {model_id!r} in {self.db}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{model_id}.npz"
        path.write_bytes(raw)
        return path

    def rmse(self, task: str, model_id: str) -> float | None:
        """The model's test RMSE, or None (logged) when it could not be computed."""
        try:
            weights = self.export(model_id)
            doc = self._evaluate(task, weights)
            return float(doc["rmse"])
        except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError) as exc:
            log.warning("test RMSE of %s not computed: %s", model_id, exc)
            return None

    def _evaluate(self, task: str, weights: Path) -> dict[str, Any]:
        argv = [*_fedmq_argv("fedmq-site", "site_node.cli"), "task", "evaluate",
                "--task", task, "--weights", str(weights), "--json"]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.out_dir
        )
        deadline = time.monotonic() + self.timeout
        try:
            while proc.poll() is None:  # a Ctrl-C of the demo must not wait for it
                if self.stop.is_set() or time.monotonic() > deadline:
                    raise subprocess.SubprocessError("stopped before it finished")
                time.sleep(0.1)
            out, err = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise subprocess.SubprocessError(f"fedmq-site task evaluate: {err.strip()[-300:]}")
        return dict(json.loads(out))
