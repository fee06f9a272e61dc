"""A site that answers train commands without syft, for coordinator training tests.

It speaks the real wire protocol on the site's own topics: retained status and
registration (one task, optionally a dataset with its row count), heartbeats, and for
each ``cmd/train`` a ``running`` status, a ``job_result`` (inline weights, or chunks) and
a ``done`` status (``done_delay_s`` later), all durable messages that ``fedmq serve``
stores. What it returns is up to ``answer(round, global_arrays) -> (npz bytes,
n_samples)``: honest or poisoned.
"""

from __future__ import annotations

import io
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from schemas import (
    DatasetSummary,
    Heartbeat,
    JobResult,
    JobStatus,
    Registration,
    ResultChunk,
    SiteStatus,
    TaskOffer,
    Topics,
    encode,
    make_blob,
)
from schemas.codec import Codec

__all__ = ["Answer", "FakeTrainer"]

Answer = Callable[[int, dict[str, np.ndarray] | None], tuple[bytes, int]]


class FakeTrainer:
    """One fake training site on a paho client in this process (``start``/``stop``)."""

    def __init__(
        self,
        port: int,
        prefix: str,
        site: str,
        task: str,
        code_hash: str,
        answer: Answer,
        rows: int | None = None,
        chunk_bytes: int = 256 * 1024,
        done_delay_s: float = 0.0,
    ) -> None:
        self.site, self.task, self.code_hash, self.answer = site, task, code_hash, answer
        self.rows, self.chunk_bytes, self.done_delay_s = rows, chunk_bytes, done_delay_s
        self.port, self.t = port, Topics(prefix)
        self.codec = Codec(self.t)
        self.seq = 0
        self.epoch = uuid.uuid4().hex[:12]
        self.jobs: list[str] = []
        self.q: queue.Queue[Any] = queue.Queue()
        self.stopped = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"trainer-{site}")
        self.c.will_set(self.t.status(site), self._status("offline"), 1, True)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, msg: self.q.put(msg)
        self.threads = [
            threading.Thread(target=self._work, daemon=True),
            threading.Thread(target=self._beat, daemon=True),
        ]

    def _status(self, state: str) -> bytes:
        return encode(SiteStatus(site=self.site, session=1, epoch=self.epoch, state=state))  # type: ignore[arg-type]

    def _on_connect(self, client: Any, *_: Any) -> None:
        client.subscribe(self.t.site_commands(self.site), 1)
        client.publish(self.t.status(self.site), self._status("online"), 1, True)
        datasets: tuple[DatasetSummary, ...] = ()
        if self.rows is not None:
            desc = f"{self.task} private rows"
            datasets = (DatasetSummary(name="data", rows=self.rows, description=desc),)
        reg = Registration(
            site=self.site, session=1, epoch=self.epoch, heartbeat_interval_s=1.0,
            datasets=datasets,
            tasks=(TaskOffer(name=self.task, code_hash=self.code_hash),),
        )  # fmt: skip
        client.publish(self.t.registration(self.site), encode(reg), 1, True)

    def start(self) -> FakeTrainer:
        self.c.connect("127.0.0.1", self.port, keepalive=5)
        self.c.loop_start()
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.q.put(None)
        self.c.publish(self.t.status(self.site), self._status("offline"), 1, True).wait_for_publish(
            5
        )
        self.c.disconnect()
        self.c.loop_stop()

    def _beat(self) -> None:
        n = 0
        while not self.stopped.wait(1.0):
            n += 1
            hb = Heartbeat(site=self.site, session=1, epoch=self.epoch, seq=n, interval_s=1.0)
            self.c.publish(self.t.heartbeat(self.site), encode(hb), 0)

    def _next(self) -> dict[str, Any]:
        self.seq += 1
        return {"site": self.site, "session": 1, "epoch": self.epoch, "seq": self.seq}

    def _publish(self, topic: str, msg: Any) -> None:
        self.c.publish(topic, encode(msg), 1)

    def _work(self) -> None:
        while (msg := self.q.get()) is not None:
            try:
                cmd: Any = self.codec.decode(msg.topic, msg.payload)
            except Exception:
                continue
            if getattr(cmd, "kind", None) == "train":
                self._train(cmd)

    def _train(self, cmd: Any) -> None:
        self.jobs.append(cmd.job_id)
        glob = None
        if cmd.weights is not None:
            raw = cmd.weights.inline_bytes()
            assert raw is not None, "the fake trainer takes inline global weights only"
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                glob = {k: z[k] for k in z.files}
        weights, n = self.answer(cmd.round, glob)
        job = {"job_id": cmd.job_id, "run_id": cmd.run_id, "round": cmd.round}
        status, result = (self.t.job_status(self.site, cmd.job_id),
                          self.t.job_result(self.site, cmd.job_id))  # fmt: skip
        self._publish(status, JobStatus(**self._next(), **job, state="running"))
        blob, parts = make_blob(weights, self.chunk_bytes)
        self._publish(result, JobResult(**self._next(), **job, n_samples=n,
                                        metrics={"rmse": 1.0}, weights=blob))  # fmt: skip
        for i, part in enumerate(parts):
            self._publish(result, ResultChunk(**self._next(), job_id=cmd.job_id, index=i,
                          total=len(parts), sha256=blob.sha256, data=part))  # fmt: skip
        if self.stopped.wait(self.done_delay_s):
            return
        self._publish(status, JobStatus(**self._next(), **job, state="done"))
