"""Probe: what the kink check of ``hvp="finite_difference"`` lets through, product by product.

The check (:mod:`catapult.curvature.difference`) refuses a product whose forward and backward
differences differ by more than ``MAX_GAP`` (0.1) of it, after retries at smaller steps. A step
that crosses a ReLU kink by a small margin gives a smaller gap and passes; across a kink the
central difference is off by about ``gap / 2`` of the product. This probe measures that error
against the dense float64 Hessian (``tests/dense_curvature.py``) on small MLPs 4-6-6-1 with MSE on 33
random samples, float32, ten random unit directions per seed, and prints, by the number of
retries the accepted product took, the largest and median ``||error|| / lambda_max`` and the
largest accepted gap; then, per seed, whether ``sharpness(tol=1e-4)`` on those products returns
an eigenvalue within its ``error_bound`` of the dense top one. A smooth activation (tanh) is the
control.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/probe_fd_margin.py [--seeds 20] [--activation relu]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

import catapult
import catapult.curvature.difference_products as products_module  # where HessianOperator takes its differences
from catapult.curvature import HessianOperator, difference

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from dense_curvature import dense_hessian  # noqa: E402  (the tests' independent float64 Hessian)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--activation", choices=["relu", "tanh"], default="relu")
    args = parser.parse_args(argv)
    steps: list[tuple[float, float]] = []  # (h, gap) of every step tried by the last product

    def spy(product_at, first_step, subject="this model"):
        def recorded(h):
            gap, finish = product_at(h)
            steps.append((h, gap))
            return gap, finish
        return difference.checked_difference(recorded, first_step, subject=subject)
    products_module.checked_difference = spy
    activation = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[args.activation]
    rows, refused, solves = [], 0, []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), activation(), torch.nn.Linear(6, 6), activation(),
                                    torch.nn.Linear(6, 1))
        x, y, loss_fn = torch.randn(33, 4), torch.randn(33, 1), torch.nn.MSELoss()
        exact = dense_hessian(model, loss_fn, (x, y)).numpy()
        eigenvalues = np.linalg.eigvalsh(exact)
        lam, top = float(np.abs(eigenvalues).max()), float(eigenvalues[-1])
        try:
            est = catapult.sharpness(model, loss_fn, (x, y), tol=1e-4, hvp="finite_difference", coarse=None)
            solves.append((abs(est.value - top) / abs(top), est.error_bound, est.converged))
        except ValueError:
            solves.append(None)
        op = HessianOperator(model, loss_fn, (x, y), hvp="finite_difference")
        gen = torch.Generator().manual_seed(seed)
        for _ in range(10):
            v = torch.randn(op.numel, generator=gen)
            v /= v.norm()
            steps.clear()
            try:
                product = op(v).double().numpy()
            except ValueError:
                refused += 1
                continue
            error = float(np.linalg.norm(product - exact @ v.double().numpy())) / lam
            rows.append((len(steps) - 1, steps[-1][1], error))
    print(f"{args.activation}, float32: {len(rows) + refused} products, {refused} refused")
    print("| retries | products | max norm(error) / lambda_max | median | largest accepted gap |")
    print("|---|---|---|---|---|")
    for retries in range(difference.STEPS):
        errors = [e for r, _, e in rows if r == retries]
        if errors:
            gap = max(g for r, g, _ in rows if r == retries)
            print(f"| {retries} | {len(errors)} | {max(errors):.1e} | {np.median(errors):.1e} | {gap:.2g} |")
    done = [s for s in solves if s is not None]
    over = [s for s in done if s[2] and s[0] > s[1]]
    print(f"sharpness(tol=1e-4, coarse=None): {len(solves) - len(done)} refused, {len(done)} returned, "
          f"{sum(bool(s[2]) for s in done)} converged, "
          f"{len(over)} converged with a relative error above error_bound"
          + (f" (largest error {max(s[0] for s in over):.1e}, its bound "
             f"{max(over, key=lambda s: s[0])[1]:.1e})" if over else ""))


if __name__ == "__main__":
    main()
