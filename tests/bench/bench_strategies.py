"""Server strategies side by side: FedAvg vs FedAdam vs FedYogi on 4 FD001 sites.

Run (about 1-2 minutes per strategy on 2 shared cores; one run at a time):

    nice -n 5 .venv/bin/python tests/bench/bench_strategies.py [--rounds 8] [--json]
    nice -n 5 .venv/bin/python tests/bench/bench_strategies.py --strategies fedadam \\
        --server-lr 0.003,0.01,0.03

The same as a run of ``fedmq train`` without the messaging: the 100 FD001 training
engines split at random (``--seed``) into ``--sites`` sites, each holding back 20% of its
engines for validation; per round every site trains ``--local-epochs`` from the global
model (round 1 from the task's initial weights), the coordinator's code aggregates
(``aggregate``, FedAvg by samples) and steps its strategy (``round.next_global`` with the
run's ``strategy`` and ``server_lr``, moments kept in a SQLite file as a run's are). The
global model of every round is scored by every site on its held-out engines
(``evaluate``, weighted by samples with ``round.federated_summary``: the federated
evaluation ``fedmq run`` shows) and on the FD001 test set. Prints one table per arm and
a summary; no target (a comparison, not a gate).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from coordinator.store.training import TrainDb
from coordinator.training.aggregate import aggregate, dump_npz, load_npz
from coordinator.training.events import TrainSpec
from coordinator.training.round import federated_summary, next_global
from coordinator.training.vet import SiteEval
from site_node.training.tasks import get_task
from site_node.training.tasks.fd001_scoring import DEFAULT_DATA_DIR, fd001_test_metrics

TRAIN_FILE = Path(__file__).resolve().parents[2] / "site_node/data/cmapss_fd001/train_FD001.txt"


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--strategies", default="fedavg,fedadam,fedyogi")
    ap.add_argument("--server-lr", default="0.01", help="comma list: one arm per value")
    ap.add_argument("--tau", type=float, default=1e-3, help="fedadam/fedyogi adaptivity")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def _arm(
    args: argparse.Namespace, sites: list[Any], strategy: str, server_lr: float, db: TrainDb
) -> dict[str, Any]:
    task = get_task("cmapss-rul")
    spec = TrainSpec(task="cmapss-rul", strategy=strategy, server_lr=server_lr, tau=args.tau)  # type: ignore[arg-type]
    run_id = f"bench-{strategy}-{server_lr:g}"
    hp = {**task.defaults, "epochs": args.local_epochs}
    weights: bytes | None = None
    rows = []
    t0 = time.perf_counter()
    for rnd in range(1, args.rounds + 1):
        start = weights if weights is not None else task.initial_weights(args.seed)
        results = []
        for data in sites:
            w, n, _ = task.train(start, data, {**hp, "seed": args.seed * 1000 + rnd,
                                               "round": rnd - 1})  # fmt: skip
            results.append((load_npz(w), n))
        combined = aggregate("fedavg", results)
        weights = dump_npz(next_global(db, spec, run_id, rnd, weights, combined))
        evals = []
        for i, data in enumerate(sites):
            scores = task.evaluate(weights, data)
            values = {k: float(v) for k, v in scores.items() if not isinstance(v, str)}
            evals.append(SiteEval(f"s{i}", "", values, {}, len(data.y_val)))
        fed = {r["metric"]: r["value"] for r in federated_summary(evals)}
        test = fd001_test_metrics(weights, DEFAULT_DATA_DIR)["rmse"]
        rows.append({"round": rnd, "fed_val_rmse": fed["rmse"], "test_rmse": test})
        lr = f"{server_lr:g}" if strategy in ("fedadam", "fedyogi") else "-"
        print(f"  {strategy:<8} lr {lr:<6} round {rnd:>2}  fed val RMSE "
              f"{fed['rmse']:7.2f}  FD001 test RMSE {test:7.2f}", flush=True)  # fmt: skip
    return {"strategy": strategy, "server_lr": server_lr, "rounds": rows,
            "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip


def main() -> int:
    args = _args()
    import torch

    torch.set_num_threads(args.threads)
    task = get_task("cmapss-rul")
    table = task.read_table(str(TRAIN_FILE))
    units = np.random.default_rng(args.seed).permutation(np.arange(1, 101))
    sites = [
        task.load_dataset(table, {"units": [int(u) for u in s], "val_fraction": 0.2})
        for s in np.array_split(units, args.sites)
    ]
    arms = []
    with tempfile.TemporaryDirectory() as tmp:
        db = TrainDb(Path(tmp) / "bench.db")
        try:
            for strategy in args.strategies.split(","):
                lrs = [float(x) for x in args.server_lr.split(",")]
                for lr in lrs if strategy in ("fedadam", "fedyogi") else lrs[:1]:
                    arms.append(_arm(args, sites, strategy.strip(), lr, db))
        finally:
            db.close()
    print()
    print(f"{'strategy':<10}{'server lr':>10}{'fed val RMSE':>14}{'test RMSE':>11}{'wall s':>8}")
    for arm in arms:
        last = arm["rounds"][-1]
        shown = f"{arm['server_lr']:g}" if arm["strategy"] in ("fedadam", "fedyogi") else "-"
        print(f"{arm['strategy']:<10}{shown:>10}{last['fed_val_rmse']:>14.2f}"
              f"{last['test_rmse']:>11.2f}{arm['wall_s']:>8.1f}")  # fmt: skip
    if args.json:
        print(json.dumps(arms, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
