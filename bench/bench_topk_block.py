"""Benchmark: top-k by block Lanczos (``top_eigenpairs(block_size=b)``), what a block costs and
what it finds.

1. Cost, where no eigenvalue repeats: the top 5 of the Fig. 1 FCN (n = 1000) and of the small
   GPT (``bench_peers``' problems), ``tol=1e-3``, ``block_size`` 1, 2, 3, seeds 0-2, one
   thread; products, CPU seconds per call (second of two rounds), the values.
2. What it finds, where eigenvalues repeat: a linear model 30 -> 3 under MSE on 200 Gaussian
   inputs, whose Hessian ``(2 / (N d)) I_3 (x) [X 1]^T [X 1]`` has every eigenvalue three times
   (closed form, float64), top 6 at ``tol=1e-6`` from seeds 0-2: the largest error against the
   closed form, per block size.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_topk_block.py [--problems fcn1000,gpt]
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

import catapult  # noqa: E402


def cost(names: list[str], blocks=(1, 2, 3), seeds=3) -> None:
    print("| problem | block_size | products per seed | CPU s per call (mean) | top 5 (seed 0) |")
    print("|---|---|---|---|---|")
    for name in names:
        model, loss, batch = problem(name)
        for b in blocks:
            rows = []
            for round_ in range(2):
                for seed in range(seeds):
                    start = time.process_time()
                    eig = catapult.top_eigenpairs(model, loss, batch, k=5, tol=1e-3, seed=seed,
                                                  block_size=b)
                    if round_:
                        rows.append((eig.matvecs, time.process_time() - start, eig.values, eig.converged))
            assert all(r[3] for r in rows)
            print(f"| {name} | {b} | {', '.join(str(r[0]) for r in rows)} | "
                  f"{np.mean([r[1] for r in rows]):.2f} | {', '.join(f'{v:.4f}' for v in rows[0][2])} |",
                  flush=True)


def multiplicity(blocks=(1, 2, 3), seeds=3) -> None:
    gen = torch.Generator().manual_seed(0)
    d_in, d_out, N = 30, 3, 200
    x = torch.randn(N, d_in, generator=gen, dtype=torch.float64) * torch.linspace(0.3, 3.0, d_in, dtype=torch.float64)
    y = torch.randn(N, d_out, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(d_in, d_out).double()
    X1 = torch.cat([x, torch.ones(N, 1, dtype=torch.float64)], 1)
    gram = np.sort(np.linalg.eigvalsh((X1.T @ X1).numpy() * 2 / (N * d_out)))[::-1]
    truth = np.repeat(gram, d_out)[:6]
    print(f"\nlinear {d_in} -> {d_out}, MSE, N = {N}: top 6 (closed form) {np.round(truth, 4).tolist()}")
    print("| block_size | top 6 (seed 0) | max error / lambda_1, seeds 0-2 | products per seed |")
    print("|---|---|---|---|")
    for b in blocks:
        errors, products, first = [], [], None
        for seed in range(seeds):
            eig = catapult.top_eigenpairs(model, torch.nn.MSELoss(), (x, y), k=6, tol=1e-6, seed=seed,
                                          block_size=b)
            errors.append(np.max(np.abs(np.array(eig.values) - truth)) / truth[0])
            products.append(eig.matvecs)
            first = first or eig.values
        print(f"| {b} | {np.round(first, 4).tolist()} | {max(errors):.1e} | {', '.join(map(str, products))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="fcn1000,gpt")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    multiplicity()
    print()
    cost(args.problems.split(","))


if __name__ == "__main__":
    main()
