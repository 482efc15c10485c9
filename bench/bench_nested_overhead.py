"""Plain tensor batches after nested batches reached the coarse start and ``distributed=True``:
CPU time per product of ``sharpness`` on a tensor batch (cold, the default coarse start,
``chunk_size``) and of one ``coarse.sub_batch`` + ``coarse_levels`` call. Run it under two
checkouts, alternating, and compare the same run's lines:

    git worktree add /tmp/before <commit before the change>
    for r in 1 2 3; do for src in /tmp/before/src src; do
        PYTHONPATH=$src OMP_NUM_THREADS=1 .venv/bin/python bench/bench_nested_overhead.py; done; done
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import catapult
from catapult.curvature.coarse import coarse_levels, sub_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    x, y = torch.randn(1000, 32), torch.randn(1000, 10)
    out = {"catapult": catapult.__file__}
    for label, kw in (("cold", {"coarse": None}), ("auto", {}), ("chunk_250", {"coarse": None, "chunk_size": 250})):
        catapult.sharpness(model, nn.MSELoss(), (x, y), tol=1e-6, max_iter=300, **kw)   # warm
        best = float("inf")
        for _ in range(args.reps):
            start = time.process_time()
            est = catapult.sharpness(model, nn.MSELoss(), (x, y), tol=1e-6, max_iter=300, **kw)
            best = min(best, time.process_time() - start)
        out[label] = {"ms_per_product": round(1e3 * best / (est.matvecs + est.coarse_cost), 3),
                      "products": est.matvecs, "coarse": est.coarse_matvecs, "value": est.value}
    best = float("inf")
    for _ in range(args.reps):
        start = time.process_time()
        for _ in range(1000):
            sub_batch(x, y, 62)
            coarse_levels((x, y), "auto")
        best = min(best, time.process_time() - start)
    out["sub_batch_us"] = round(best * 1e3, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
