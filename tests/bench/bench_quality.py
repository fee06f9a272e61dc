"""Quality benchmark: FedAvg over 4 FD001 sites vs a centralized run of the same model.

Run (about 3-6 minutes on 2 shared cores):

    .venv/bin/python tests/bench/bench_quality.py [--rounds 20 --local-epochs 2 --seed 0]

The 100 FD001 training engines are split at random into 4 sites of 25; each site keeps
20% of its engines for local validation. Federated: ``--rounds`` rounds of
``--local-epochs`` epochs per site from the global model, FedAvg weighted by samples
(``coordinator.fedavg``). Centralized: the same model trained on the union of the sites'
training engines for rounds x local-epochs epochs. Both are scored by the coordinator's
FD001 test RMSE (``coordinator.fd001_eval``), measured side by side in one run. Target:
federated RMSE <= 13.0 and within 5% of centralized. Exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from coordinator.fd001_eval import DEFAULT_DATA_DIR, fd001_test_rmse
from coordinator.fedavg import fedavg
from site_node.tasks import get_task


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategy", choices=["fedavg", "fedprox"], default="fedavg")
    ap.add_argument("--lr", type=float, default=None, help="default: the task's")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the task's")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest here)")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    task = get_task("cmapss-rul")
    table = task.read_table(Path(args.data_dir) / "train_FD001.txt")
    units = np.random.default_rng(args.seed).permutation(np.arange(1, 101))
    shares = np.array_split(units, args.sites)
    sites = [task.load_dataset(table, {"units": [int(u) for u in s]}) for s in shares]
    extra = {k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size)) if v}
    hp = {"epochs": args.local_epochs, "strategy": args.strategy, **extra}

    t0 = time.perf_counter()
    weights = task.initial_weights(args.seed)
    site_times: list[float] = []
    for rnd in range(args.rounds):
        results = []
        for data in sites:
            ts = time.perf_counter()
            w, n, _ = task.train(weights, data, {**hp, "seed": args.seed * 1000 + rnd})
            site_times.append(time.perf_counter() - ts)
            results.append((w, n))
        weights = fedavg(results)
        if (rnd + 1) % 5 == 0 or rnd + 1 == args.rounds:
            print(
                f"round {rnd + 1}: test rmse {fd001_test_rmse(weights, args.data_dir)['rmse']:.2f}"
            )
    fed_s = time.perf_counter() - t0
    fed = fd001_test_rmse(weights, args.data_dir)["rmse"]
    fed_val = [task.evaluate(weights, d)["rmse"] for d in sites]

    t0 = time.perf_counter()
    union = replace(
        sites[0],
        x_train=np.concatenate([d.x_train for d in sites]),
        y_train=np.concatenate([d.y_train for d in sites]),
        x_val=np.concatenate([d.x_val for d in sites]),
        y_val=np.concatenate([d.y_val for d in sites]),
    )
    cen_w, _, cen_metrics = task.train(
        task.initial_weights(args.seed),
        union,
        {**extra, "epochs": args.rounds * args.local_epochs, "seed": args.seed},
    )
    cen_s = time.perf_counter() - t0
    cen = fd001_test_rmse(cen_w, args.data_dir)["rmse"]

    ok = fed <= 13.0 and fed <= 1.05 * cen
    report = {
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "sites": args.sites,
        "strategy": args.strategy,
        "hyperparams": extra,
        "federated_test_rmse": round(fed, 3),
        "centralized_test_rmse": round(cen, 3),
        "ratio_fed_over_central": round(fed / cen, 4),
        "federated_site_val_rmse": [round(v, 2) for v in fed_val],
        "centralized_val_rmse": round(cen_metrics["rmse"], 3),
        "federated_wall_s": round(fed_s, 1),
        "centralized_wall_s": round(cen_s, 1),
        "mean_site_job_s": round(float(np.mean(site_times)), 2),
        "target_met": ok,
    }
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
