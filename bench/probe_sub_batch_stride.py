"""Probe: `catapult.sharpness` with its default coarse start on the Fig. 1 FCN (bench_peers'
problems), per seed: value, exact products, coarse products and CPU seconds (the second of two
calls). Run it on two versions of the code (one with its src/ first on PYTHONPATH) to compare,
e.g. sub-batches of the first n/16 samples against every 16th sample:

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_sub_batch_stride.py --problems fcn1000,fcn2500
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/old/src .venv/bin/python bench/probe_sub_batch_stride.py ...
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="fcn1000", help="comma-separated bench_peers problems")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-seeds", type=int, default=1,
                        help="FCN batches drawn with make_batch(n, seed) for seed 0..N-1 (start seed 0 then)")
    args = parser.parse_args()
    import catapult
    from bench_peers import problem

    print("catapult from", os.path.dirname(catapult.__file__))
    for name in args.problems.split(","):
        if args.data_seeds > 1:  # the same FCN on other batches of its synthetic data
            from bench_sharpness import make_batch
            model, loss, _ = problem(name)
            for data in range(args.data_seeds):
                x, y = make_batch(int(name[3:]), seed=data)
                batch = (x, torch.nn.functional.one_hot(y, 10).float())
                catapult.sharpness(model, loss, batch, tol=1e-3, seed=0)
                start = time.process_time()
                est = catapult.sharpness(model, loss, batch, tol=1e-3, seed=0)
                print(f"{name} data {data}: value {est.value:.6f} products {est.matvecs} (+{est.coarse_matvecs}) "
                      f"cost {est.coarse_cost:.2f} cpu {time.process_time() - start:.2f} s", flush=True)
            continue
        model, loss, batch = problem(name)
        for seed in range(args.seeds):
            for _ in range(2):  # the second call is timed
                start = time.process_time()
                est = catapult.sharpness(model, loss, batch, tol=1e-3, seed=seed)
                cpu = time.process_time() - start
            print(f"{name} seed {seed}: value {est.value:.6f} products {est.matvecs} (+{est.coarse_matvecs}) "
                  f"cost {est.coarse_cost:.2f} cpu {cpu:.2f} s", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main()
