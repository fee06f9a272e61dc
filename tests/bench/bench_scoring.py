"""Live scoring benchmark (issue 14): latency per window, RSS, telemetry side by side.

Command (not collected by pytest)::

    .venv/bin/python -m tests.bench.bench_scoring [--seconds 30] [--devices 4] [--rate 250]
        [--cadence 1] [--onnx-pythonpath DIR]

Prints four parts:

1. **Scoring latency** of the cmapss-rul task's ``predict`` through the real scoring
   process (``site_node.scoring.supervisor.ScoringProcess``, torch, 1 thread): wall ms per
   window including the pipe round trip, the process's CPU ms per window and the median
   ``predict`` time, for requests of 1 and of 64 windows; the process's RSS after loading
   and after scoring.
2. **The row watcher's cost** on the telemetry path: microseconds per reading of
   ``Windows.add`` (a 26-sample C-MAPSS row into a 30-row window), in this process.
3. **Two sites side by side** (real Mosquitto, two ``fedmq-site run`` with the same
   ``[training]`` allow-list and ``--devices`` file devices replaying FD001 at ``--rate``
   rows/s each, one acker per site): one gets a signed deploy (``--cadence``) and scores
   every device, the other does not. Over ``--seconds`` after the scorer is up: telemetry
   samples per second each site delivers through the broker (counted by a subscriber;
   the ratio scoring/plain is the target, >= 0.9x, also shown for each fifth of the run),
   CPU microseconds per sample of each daemon (and of the scoring process), predictions
   per second, and the RSS of each daemon and of the scoring process.
4. **ONNX**: with ``--onnx-pythonpath DIR`` (a folder holding ``onnx`` and
   ``onnxruntime``, e.g. ``pip install --target DIR --no-deps onnxruntime "onnx<1.18"
   protobuf flatbuffers "ml_dtypes<0.5"``; the project's venv is not changed), the same
   model is exported with ``torch.onnx.export`` and scored by onnxruntime in a fresh
   interpreter with numpy only: its RSS and ms per window beside the torch scorer's.
   Without it the part says what is missing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from coordinator.admin.signing import generate_keypair, load_private_key, sign
from schemas import DeployChunk, DeployCommand, Sample, Topics, encode, make_blob, now_ms
from site_node.scoring.protocol import Load, Score
from site_node.scoring.supervisor import ProcessConfig, ScoringProcess
from site_node.scoring.windows import Windows
from site_node.training.tasks import get_task
from tests.helpers.acker import Acker
from tests.helpers.broker import Broker
from tests.helpers.data import TRAIN_FD001
from tests.helpers.mqtt import TestClient
from tests.helpers.site_proc import SiteProc, site_settings

TASK = "cmapss-rul"


def _rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _weights(tmp: Path) -> Path:
    """cmapss-rul trained for a few seconds (realistic weights; the values do not matter
    for speed)."""
    impl = get_task(TASK).impl
    table = impl.read_table(TRAIN_FD001, {"units": list(range(3, 13))})
    data = impl.load_dataset(table, {"val_fraction": 0})
    weights, _n, _m = impl.train(None, data, {"epochs": 2, "seed": 1})
    path = tmp / "weights.npz"
    path.write_bytes(weights)
    return path


def _engine_rows(n: int) -> list[dict[str, float]]:
    cols = ["unit", "cycle", "op_setting_1", "op_setting_2", "op_setting_3",
            *(f"s{i}" for i in range(1, 22))]  # fmt: skip
    rows = []
    for line in TRAIN_FD001.read_text().splitlines()[:n]:
        rows.append(dict(zip(cols, map(float, line.split()), strict=True)))
    return rows


# -- 1. latency ------------------------------------------------------------------------


def part_latency(weights: Path, n: int = 300) -> dict[str, Any]:
    code_hash = get_task(TASK).code_hash
    rows = _engine_rows(n + 30)
    windows = [rows[i : i + 30] for i in range(n)]
    proc = ScoringProcess(ProcessConfig(None, nice=0, threads=1, memory_limit_mb=8192))
    out: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        loaded = proc.load(Load(TASK, code_hash, weights), 300)
        out["start_and_load_s"] = time.perf_counter() - t0
        out["rss_loaded_mb"] = _rss(proc.pid)
        for batch in (1, 64):
            items = [("e", w) for w in windows]
            t0, cpu, ms = time.perf_counter(), 0.0, []
            for i in range(0, len(items), batch):
                scored = proc.score(Score(tuple(items[i : i + batch])), 300)
                cpu += scored.cpu_s
                ms += [r.ms for r in scored.results]
                assert all(r.outputs for r in scored.results), scored.results[0].error
            wall = time.perf_counter() - t0
            out[f"batch{batch}"] = {
                "wall_ms_per_window": wall / n * 1000,
                "cpu_ms_per_window": cpu / n * 1000,
                "predict_ms_median": statistics.median(ms),
            }
        out["rss_scoring_mb"] = _rss(proc.pid)
        out["window"] = loaded.window
    finally:
        proc.stop()
    return out


# -- 2. the row watcher -----------------------------------------------------------------


def part_watcher(n: int = 100_000) -> dict[str, float]:
    rows = _engine_rows(200)
    samples = [[Sample(ts=1_700_000_000_000 + i, name=k, value=v) for k, v in r.items()]
               for i, r in enumerate(rows)]  # fmt: skip
    w = Windows(size=30, max_devices=1000)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        w.add(f"e{i % 4}", samples[i % len(samples)])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"us_per_reading": wall / n * 1e6, "cpu_us_per_reading": cpu / n * 1e6}


# -- 3. two sites -------------------------------------------------------------------------


class _Counter:
    """Counts one site's telemetry samples and predictions as the broker delivers them
    (QoS 1; a bytes count per message, no JSON parsing, so it keeps up)."""

    def __init__(self, port: int, prefix: str, site: str) -> None:
        self.samples = 0
        self.predictions = 0
        self._c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cnt-{uuid.uuid4().hex[:8]}")
        self._c.on_message = self._on_message
        self._c.connect("127.0.0.1", port)
        self._c.subscribe([(f"{prefix}/site/{site}/telemetry/+", 1),
                           (f"{prefix}/site/{site}/prediction/+", 1)])  # fmt: skip
        self._c.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if "/telemetry/" in msg.topic:
            self.samples += msg.payload.count(b'"name":')
        else:
            self.predictions += 1

    def snapshot(self) -> tuple[int, int]:
        return self.samples, self.predictions

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()


def _scorer_pid(site_pid: int) -> int | None:
    for child in psutil.Process(site_pid).children():
        if "site_node.scoring.worker" in " ".join(child.cmdline()):
            return child.pid
    return None


def part_sites(
    tmp: Path, weights: Path, seconds: float, devices: int, rate: float, cadence: float
) -> dict[str, Any]:
    code_hash = get_task(TASK).code_hash
    generate_keypair(tmp / "coord.key", tmp / "coord.pub")
    key = load_private_key(tmp / "coord.key")
    raw = weights.read_bytes()
    out: dict[str, Any] = {}
    (tmp / "broker").mkdir()
    broker = Broker(tmp / "broker")
    broker.start()
    try:
        sites: dict[str, SiteProc] = {}
        ackers: dict[str, Acker] = {}
        counters: dict[str, _Counter] = {}
        prefixes: dict[str, str] = {}
        for name in ("scoring", "plain"):
            prefix = prefixes[name] = f"bench-{uuid.uuid4().hex[:8]}/fedmq/v1"
            devs = [{"name": f"engine{i}", "source": "file", "path": str(TRAIN_FD001),
                     "preset": "cmapss", "rate_hz": rate, "loop": True}
                    for i in range(devices)]  # fmt: skip
            settings = site_settings(
                tmp, broker.port, prefix, site_id=name, devices=devs,
                coordinator_public_key_file=str(tmp / "coord.pub"),
                training={"allow": [f"{TASK}@{code_hash}"]},
                batch_max_samples=1000, history={"enabled": False},
            )  # fmt: skip
            counters[name] = _Counter(broker.port, prefix, name)
            sites[name] = SiteProc(tmp / name, settings, suite_nice=False).start()
            # The acker acks (as the coordinator does) so both outboxes stay small.
            ackers[name] = Acker(broker.port, prefix, tmp / f"acker-{name}.db").start()
        try:
            deadline = time.monotonic() + 120
            while not all(any(h.get("site") == s for h in ackers[s].heartbeats) for s in sites):
                if time.monotonic() > deadline:
                    raise RuntimeError("sites did not come up")
                time.sleep(0.2)
            blob, parts = make_blob(raw, 64 * 1024)
            cmd = DeployCommand(
                site="scoring", session=1, cmd_id=uuid.uuid4().hex,
                expires_at=now_ms() + 600_000, deployment_id="bench", model_version="bench-1",
                task=TASK, code_hash=code_hash, weights=blob, cadence_s=cadence,
                rules=("rul < 30 for 3 windows",),
            )  # fmt: skip
            topics = Topics(prefixes["scoring"])
            client = TestClient(broker.port).connect()
            client.publish(topics.cmd("scoring", "deploy"), encode(sign(cmd, key,
                           prefixes["scoring"])))  # fmt: skip
            for i, part in enumerate(parts):
                client.publish(topics.cmd("scoring", "deploy"), encode(DeployChunk(
                    site="scoring", session=1, job_id="bench", index=i, total=len(parts),
                    sha256=blob.sha256, data=part)))  # fmt: skip
            deadline = time.monotonic() + 300
            while counters["scoring"].predictions < devices:
                if time.monotonic() > deadline:
                    raise RuntimeError("no predictions from the scoring site")
                time.sleep(0.5)
            client.close()
            time.sleep(3)  # past the first scores
            pid = {s: p.pid for s, p in sites.items()}
            scorer = _scorer_pid(pid["scoring"])
            assert scorer is not None
            c0 = {s: _cpu(p) for s, p in pid.items()}
            sc0 = _cpu(scorer)
            t0 = time.monotonic()
            rss: dict[str, list[float]] = {"scoring": [], "plain": [], "scorer": []}
            # The ratio of each fifth of the run too: on a shared machine one window's
            # ratio moves with whatever else runs; the median of five says more.
            marks = [{s: c.snapshot() for s, c in counters.items()}]
            while time.monotonic() - t0 < seconds:
                time.sleep(seconds / 5)
                for s, p in pid.items():
                    rss[s].append(_rss(p))
                rss["scorer"].append(_rss(scorer))
                marks.append({s: c.snapshot() for s, c in counters.items()})
            elapsed = time.monotonic() - t0
            c1 = {s: _cpu(p) for s, p in pid.items()}
            sc1 = _cpu(scorer)
            out["ratios"] = [
                (b["scoring"][0] - a["scoring"][0]) / max(b["plain"][0] - a["plain"][0], 1)
                for a, b in itertools.pairwise(marks)
            ]
            first, last = marks[0], marks[-1]
            for s in sites:
                n = last[s][0] - first[s][0]
                cpu = c1[s] - c0[s]
                out[s] = {
                    "samples_per_s": n / elapsed,
                    "daemon_cpu_us_per_sample": cpu / max(n, 1) * 1e6,
                    "daemon_cpu_percent": cpu / elapsed * 100,
                    "predictions_per_s": (last[s][1] - first[s][1]) / elapsed,
                    "daemon_rss_mb": max(rss[s]),
                }
            n_scoring = last["scoring"][0] - first["scoring"][0]
            out["scorer"] = {
                "cpu_percent": (sc1 - sc0) / elapsed * 100,
                "rss_mb": max(rss["scorer"]),
                "cpu_us_per_sample": (sc1 - sc0) / max(n_scoring, 1) * 1e6,
            }
            out["ratio"] = out["scoring"]["samples_per_s"] / max(out["plain"]["samples_per_s"], 1)
            out["offered_samples_per_s"] = devices * rate * 26
        finally:
            for proc in sites.values():
                proc.kill()
            for a in ackers.values():
                a.stop()
            for c in counters.values():
                c.close()
    finally:
        broker.stop()
    return out


# -- 4. ONNX ------------------------------------------------------------------------------

_EXPORT = """
import sys, torch
sys.path.insert(0, {repo!r})
from site_node.training.tasks import cmapss_rul as m
model = m._model(open({weights!r}, "rb").read()).eval()
torch.onnx.export(model, (torch.zeros(1, m.WINDOW, len(m.SENSORS)),), {out!r}, dynamo=False,
                  input_names=["x"], output_names=["rul"], dynamic_axes={{"x": {{0: "b"}}}})
"""

# A scorer with numpy and onnxruntime only (what a base install would run): the same
# scaling constants as cmapss-rul, the model loaded once.
_ORT = """
import json, sys, time, numpy as np, onnxruntime as ort
sys.path.insert(0, {repo!r})
lo = np.array({lo!r}); hi = np.array({hi!r}); sensors = {sensors!r}
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
s = ort.InferenceSession({model!r}, opts, providers=["CPUExecutionProvider"])
rows = json.load(open({rows!r}))
def predict(window):
    raw = np.array([[r[k] for k in sensors] for r in window[-30:]], np.float64)
    x = ((raw - lo) / (hi - lo)).astype(np.float32)[None]
    return float(s.run(None, {{"x": x}})[0][0])
c0, t0 = time.process_time(), time.perf_counter()
n = len(rows) - 30
for i in range(n):
    predict(rows[i:i + 30])
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
rss = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
print(json.dumps({{"ms_per_window": wall / n * 1000, "cpu_ms_per_window": cpu / n * 1000,
                  "rss_mb": rss}}))
"""


def part_onnx(tmp: Path, weights: Path, pythonpath: str | None) -> dict[str, Any]:
    if not pythonpath:
        return {"skipped": "no --onnx-pythonpath: onnx (for export) and onnxruntime are not "
                           "installed in the project's venv"}  # fmt: skip
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    model = tmp / "cmapss.onnx"
    code = _EXPORT.format(repo=repo, weights=str(weights), out=str(model))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    impl = get_task(TASK).impl
    rows = tmp / "rows.json"
    rows.write_text(json.dumps(_engine_rows(330)))
    code = textwrap.dedent(_ORT).format(
        repo=repo, lo=impl.SENSOR_MIN.tolist(), hi=impl.SENSOR_MAX.tolist(),
        sensors=list(impl.SENSORS), model=str(model), rows=str(rows),
    )  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True)  # fmt: skip
    out = dict(json.loads(res.stdout.strip().splitlines()[-1]))
    out["model_bytes"] = model.stat().st_size
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--rate", type=float, default=250.0, help="rows/s per device (26 samples)")
    ap.add_argument("--cadence", type=float, default=1.0)
    ap.add_argument("--onnx-pythonpath", default=None)
    ap.add_argument("--skip-sites", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as d:
        tmp = Path(d)
        weights = _weights(tmp)
        lat = part_latency(weights)
        print("1. scoring latency (torch scorer process, 1 thread)")
        print(
            f"   start+load {lat['start_and_load_s']:.2f} s; RSS loaded "
            f"{lat['rss_loaded_mb']:.0f} MB, after scoring {lat['rss_scoring_mb']:.0f} MB"
        )
        for b in (1, 64):
            x = lat[f"batch{b}"]
            print(f"   {b:>2} window(s)/request: {x['wall_ms_per_window']:.2f} ms wall/window, "
                  f"{x['cpu_ms_per_window']:.2f} ms CPU/window (scorer), predict median "
                  f"{x['predict_ms_median']:.2f} ms")  # fmt: skip
        w = part_watcher()
        print("2. row watcher (Windows.add, 26-sample row, 30-row window)")
        print(f"   {w['us_per_reading']:.2f} us/reading wall, {w['cpu_us_per_reading']:.2f} us CPU")
        if not args.skip_sites:
            s = part_sites(tmp, weights, args.seconds, args.devices, args.rate, args.cadence)
            print(f"3. two sites side by side, {args.devices} devices x {args.rate:g} rows/s "
                  f"(offered {s['offered_samples_per_s']:.0f} samples/s each), cadence "
                  f"{args.cadence:g} s, {args.seconds:g} s")  # fmt: skip
            for name in ("plain", "scoring"):
                x = s[name]
                print(f"   {name:>7}: {x['samples_per_s']:8.0f} samples/s delivered, daemon "
                      f"{x['daemon_cpu_us_per_sample']:.1f} us CPU/sample "
                      f"({x['daemon_cpu_percent']:.0f} % CPU), RSS {x['daemon_rss_mb']:.0f} MB, "
                      f"{x['predictions_per_s']:.1f} predictions/s")  # fmt: skip
            sc = s["scorer"]
            print(f"   scorer : {sc['cpu_percent']:.1f} % CPU, {sc['cpu_us_per_sample']:.2f} us "
                  f"CPU per telemetry sample, RSS {sc['rss_mb']:.0f} MB; scoring site total "
                  f"RSS {s['scoring']['daemon_rss_mb'] + sc['rss_mb']:.0f} MB")  # fmt: skip
            each = ", ".join(f"{r:.2f}" for r in s["ratios"])
            print(
                f"   throughput ratio scoring/plain: {s['ratio']:.2f}x over the run, median "
                f"{statistics.median(s['ratios']):.2f}x of five parts ({each}); "
                "target >= 0.9x"
            )
        o = part_onnx(tmp, weights, args.onnx_pythonpath)
        print("4. ONNX (onnxruntime scorer: numpy + onnxruntime, model loaded once)")
        if "skipped" in o:
            print(f"   skipped: {o['skipped']}")
        else:
            print(f"   model {o['model_bytes'] / 1024:.0f} kB; {o['ms_per_window']:.3f} ms/window, "
                  f"{o['cpu_ms_per_window']:.3f} ms CPU/window; RSS {o['rss_mb']:.0f} MB "
                  f"(torch scorer: {lat['rss_scoring_mb']:.0f} MB, "
                  f"{lat['batch64']['cpu_ms_per_window']:.2f} ms CPU/window)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
