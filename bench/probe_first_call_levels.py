"""Probe: the cost of the first call of a warm-started sharpness chain (issue 16, item 2): the
default coarse-to-fine start against other coarse levels and against a start from the gradient,
on the Fig. 1 FCN of bench_sharpness.py, per batch (``make_batch(n, seed)``), counted in
full-batch-equivalent products (exact products + each sub-batch product weighted by its share of
the samples), with its CPU seconds (a first warm-up call not counted):

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_first_call_levels.py --n 2500 --data-seeds 6
    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_first_call_levels.py --n 1000 --data-seeds 8 --settings default,last1e-3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: name -> sharpness() keywords; "gradient" starts from the loss gradient (init=g).
SETTINGS = {
    "default": {},
    "tol1e-3": dict(coarse=((16, 1e-3), (4, 1e-3))),
    "last1e-3": dict(coarse=((16, 3e-3), (4, 1e-3))),
    "levels8-2": dict(coarse=((8, 3e-3), (2, 3e-3))),
    "levels16-4-2": dict(coarse=((16, 3e-3), (4, 3e-3), (2, 3e-3))),
    "first1e-2": dict(coarse=((16, 1e-2), (4, 3e-3))),
    "gradient": "gradient",
    "cold": dict(coarse=None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2500, help="batch size")
    parser.add_argument("--data-seeds", type=int, default=6, help="batches make_batch(n, seed), seed 0..N-1")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of: {', '.join(SETTINGS)}")
    args = parser.parse_args()
    from bench_sharpness import make_batch, make_model, mse
    from catapult import sharpness

    names = args.settings.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    model = make_model("sp")
    cost: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for data_seed in range(args.data_seeds):
        batch = make_batch(args.n, data_seed)
        for name in names:
            kwargs = SETTINGS[name]
            if kwargs == "gradient":
                model.zero_grad()
                mse(model(batch[0]), batch[1]).backward()
                kwargs = dict(init=torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
                model.zero_grad()
            if data_seed == 0 and name == names[0]:
                sharpness(model, mse, batch, tol=1e-3, **kwargs)   # warm-up: first-call costs
            start = time.process_time()
            est = sharpness(model, mse, batch, tol=1e-3, **kwargs)
            cpu[name].append(time.process_time() - start)
            cost[name].append(est.matvecs + est.coarse_cost)
            print(f"batch {data_seed} {name}: {est.matvecs} exact + {est.coarse_matvecs} coarse products "
                  f"({est.coarse_cost:.2f} equivalents), value {est.value:.6g}", flush=True)
    print("\n| setting | full-batch-equivalent products per batch | mean | CPU s, mean |\n|---|---|---|---|")
    for name in names:
        print(f"| {name} | {', '.join(f'{c:.1f}' for c in cost[name])} | {statistics.mean(cost[name]):.2f} | "
              f"{statistics.mean(cpu[name]):.2f} |")


if __name__ == "__main__":
    main()
