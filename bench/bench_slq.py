"""Stochastic Lanczos quadrature with a bounded basis (issue 16, spectrum): accuracy of
``spectral_density(..., max_basis=b)`` against full re-orthogonalisation and against the dense
eigendecomposition of a small model's Hessian.

Problem: a tanh MLP 16-32-32-4 (1,764 parameters) with MSE on 128 seeded random samples, in
float64 and float32. Truth: ``numpy.linalg.eigvalsh`` of the dense float64 Hessian. For each
``max_basis`` (None = full re-orthogonalisation) and seed: the SLQ density (``runs`` Rademacher
vectors, ``steps`` steps) against the dense density smoothed with the same ``sigma`` on the same
grid (L1 distance, integral of |difference|; 2 = disjoint) and against the full
re-orthogonalisation's density from the same vectors (the effect of the bounded basis alone),
the error of the top node against lambda_max, the relative error of the quadrature's moments
``sum_j w_j theta_j^p`` against the exact ``u^T H^p u`` of the same unit vector ``u`` (p = 1,
2, 4, 8; Gauss quadrature is exact for them in exact arithmetic), and the number of nodes within
1e-4 (relative) of lambda_max (copies of the converged top eigenvalue: "ghosts" when > 1).

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_slq.py [--seeds 3] [--steps 80] [--runs 8]
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn

from catapult.curvature import HessianOperator
from catapult.curvature.spectrum import lanczos_quadrature

# the dense float64 truth the tests use (torch.autograd.functional, nothing from catapult)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from dense_curvature import dense_hessian  # noqa: E402


def problem(seed: int, n: int = 128):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 4)).double()
    return model, nn.MSELoss(), (torch.randn(n, 16, dtype=torch.float64),
                                 torch.randn(n, 4, dtype=torch.float64))


def smoothed(grid, nodes, weights, sigma):
    z = (grid[:, None] - nodes[None, :]) / sigma
    return (np.exp(-0.5 * z ** 2) @ weights) / (sigma * math.sqrt(2 * math.pi))


MODES = (None, 20, 10, 5, 2)
POWERS = (1, 2, 4, 8)


def measure(args):
    results = {}  # (dtype, b) -> list of per-seed stats
    for seed in range(args.seeds):
        model, loss_fn, batch = problem(seed)
        H = dense_hessian(model, loss_fn, batch).numpy()
        eigs, V = np.linalg.eigh(H)
        top = eigs[-1]
        sigma = 0.01 * (eigs[-1] - eigs[0])
        grid = np.linspace(eigs[0] - 3 * sigma, eigs[-1] + 3 * sigma, 2000)
        dx = grid[1] - grid[0]
        exact = smoothed(grid, eigs, np.full(len(eigs), 1.0 / len(eigs)), sigma)
        gen = torch.Generator().manual_seed(seed)
        us = [(torch.randint(0, 2, (H.shape[0],), generator=gen) * 2 - 1).double()
              for _ in range(args.runs)]
        for dtype in (torch.float64, torch.float32):
            op = HessianOperator(model, loss_fn, batch, dtype=dtype)
            full_density = None
            for b in MODES:
                dens, mom, ghosts, top_err, bottom_err = 0.0, 0.0, 0, 0.0, 0.0
                for u in us:
                    nodes, weights = lanczos_quadrature(op, u.to(dtype), args.steps, b)
                    un = u.numpy() / np.linalg.norm(u.numpy())
                    c = V.T @ un  # exact quadratic forms u^T H^p u = sum c_i^2 lambda_i^p
                    for p in POWERS:
                        ref = float(np.sum(c ** 2 * eigs ** p))
                        got = float(np.sum(weights * nodes ** p))
                        mom = max(mom, abs(got - ref) / float(np.sum(c ** 2 * np.abs(eigs) ** p)))
                    dens = dens + smoothed(grid, nodes, weights, sigma) / len(us)
                    ghosts = max(ghosts, int(np.sum(np.abs(nodes - top) <= 1e-4 * abs(top))))
                    top_err = max(top_err, abs(nodes.max() - top) / abs(top))
                    bottom_err = max(bottom_err, abs(nodes.min() - eigs[0]) / abs(top))
                if b is None:
                    full_density = dens
                results.setdefault((dtype, b), []).append((
                    float(np.sum(np.abs(dens - exact)) * dx),
                    float(np.sum(np.abs(dens - full_density)) * dx), top_err, mom, ghosts,
                    bottom_err))
    print(f"{args.runs} Rademacher vectors x {args.steps} steps, {args.seeds} seeds, sigma = 1% "
          f"of the spectrum's range, 2000-point grid")
    print("| dtype | max_basis | vectors kept | density L1 vs dense (mean +- sd) | L1 vs full "
          "re-orth. (max) | top node rel. err (max) | moments p=1,2,4,8 rel. err (max) | "
          "nodes at lambda_max (max) | lowest node err. / lambda_max (max) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (dtype, b), stats in results.items():
        s = np.array(stats)
        print(f"| {str(dtype).split('.')[-1]} | {'full' if b is None else b} | "
              f"{args.steps if b is None else b} | {s[:, 0].mean():.4f} +- {s[:, 0].std():.4f} | "
              f"{s[:, 1].max():.1e} | {s[:, 2].max():.1e} | {s[:, 3].max():.1e} | "
              f"{int(s[:, 4].max())} | {s[:, 5].max():.1e} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--runs", type=int, default=8)
    measure(parser.parse_args())
