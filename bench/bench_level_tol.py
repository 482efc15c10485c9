"""Benchmark: coarse levels that stop at the solve's own tol (``coarse="auto"``) against levels
fixed at 3e-3 (what ``"auto"`` did before), at loose tols, same run, interleaved per seed.

Problems are ``bench/bench_peers.py``'s (``gpt``: the finite-difference level; ``fcn1000``: the
two sub-batch levels). Reported per tol and variant: the largest relative error against a
float64 reference, the largest reported ``error_bound`` (the promise: error <= bound <= tol),
exact and coarse products per seed, and mean CPU seconds.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_level_tol.py [--problems gpt,fcn1000] [--seeds 3]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import problem  # noqa: E402
from bench_sharpness import Timer  # noqa: E402

from catapult.curvature import sharpness  # noqa: E402
from catapult.curvature.coarse import COARSE_LEVELS, SMALL_BATCH_LEVELS  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="gpt,fcn1000")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tols", default="1e-2,3e-2")
    args = parser.parse_args(argv)
    print(f"# bench_level_tol: torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load avg at start {os.getloadavg()[0]:.2f}")
    for name in args.problems.split(","):
        model, loss, batch = problem(name)
        ref = sharpness(model, loss, batch, tol=1e-10, max_iter=1000, dtype=torch.float64, max_basis=64).value
        fixed = SMALL_BATCH_LEVELS if name.startswith("gpt") else COARSE_LEVELS
        print(f"\n## {name} (reference {ref:.8g})\n\n| tol | levels | max rel. error | max error_bound | "
              f"exact products | coarse products | CPU s (mean) |\n|---|---|---|---|---|---|---|")
        for tol in (float(x) for x in args.tols.split(",")):
            runs = {"fixed at 3e-3 (before)": [], "at the solve's tol (auto, now)": []}
            for seed in range(args.seeds):
                for label, coarse in (("fixed at 3e-3 (before)", fixed), ("at the solve's tol (auto, now)", "auto")):
                    with Timer() as t:
                        e = sharpness(model, loss, batch, tol=tol, seed=seed, coarse=coarse)
                    runs[label].append((abs(e.value - ref) / abs(ref), e.error_bound, e.matvecs,
                                        e.coarse_matvecs, t.cpu))
            for label, r in runs.items():
                print(f"| {tol:g} | {label} | {max(x[0] for x in r):.1e} | {max(x[1] for x in r):.1e} | "
                      f"{[x[2] for x in r]} | {[x[3] for x in r]} | {np.mean([x[4] for x in r]):.3f} |", flush=True)
    print(f"\nload avg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
