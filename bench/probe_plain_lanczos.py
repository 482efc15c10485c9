"""Probe: the coarse levels' Lanczos with and without its Gram-Schmidt pass, same run.

The coarse levels (``catapult.curvature.coarse``) only make a start vector for the certifying
full-batch solve, and run plain Lanczos (``reorthogonalize=False``). This runs
``sharpness(tol=1e-3)`` per problem and seed with the levels as shipped ("plain") and with the
pass put back ("pass", by wrapping the levels' solver), alternating, for ``--rounds`` rounds of
which the first is a warm-up. Prints exact and coarse products, the relative error against
``bench_peers``' reference, and the mean wall and CPU seconds per call of each mode.

Usage:  .venv/bin/python bench/probe_plain_lanczos.py [--problems fcn1000,fcn2500,gpt,gpt_bpe]
        [--threads 2] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import problem  # noqa: E402  (the same problems)

import catapult.curvature.coarse as coarse  # noqa: E402
from catapult.curvature import sharpness  # noqa: E402

SHIPPED = coarse.lanczos_top_eigenpair


def with_pass(*args, **kwargs):
    kwargs["reorthogonalize"] = True
    return SHIPPED(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="fcn1000,fcn2500,gpt,gpt_bpe")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.2f}")
    for name in args.problems.split(","):
        model, loss, batch = problem(name)
        ref = sharpness(model, loss, batch, tol=1e-10, max_iter=1000, dtype=torch.float64,
                        max_basis=64).value  # bench_peers' reference
        rows: dict[str, list] = {"plain": [], "pass": []}
        for round_ in range(args.rounds):
            for mode in ("plain", "pass") if round_ % 2 == 0 else ("pass", "plain"):
                coarse.lanczos_top_eigenpair = SHIPPED if mode == "plain" else with_pass
                for seed in range(args.seeds):
                    wall, cpu = time.perf_counter(), time.process_time()
                    est = sharpness(model, loss, batch, tol=1e-3, seed=seed)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    if round_:
                        rows[mode].append((seed, est.matvecs, est.coarse_matvecs,
                                           abs(est.value - ref) / ref, wall, cpu))
        coarse.lanczos_top_eigenpair = SHIPPED
        print(f"\n## {name} (reference {ref:.8g})")
        print("| levels' Lanczos | exact + coarse products per seed | max rel. error | wall s | CPU s |")
        print("|---|---|---|---|---|")
        for mode, got in rows.items():
            first = got[:args.seeds]
            products = ", ".join(f"{r[1]} (+{r[2]})" for r in first)
            print(f"| {mode} | {products} | {max(r[3] for r in got):.1e} | "
                  f"{np.mean([r[4] for r in got]):.3f} | {np.mean([r[5] for r in got]):.3f} |")
        ratio = np.mean([r[4] for r in rows["plain"]]) / np.mean([r[4] for r in rows["pass"]])
        print(f"plain / pass, wall: {ratio:.3f}")


if __name__ == "__main__":
    main()
