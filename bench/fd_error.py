"""Relative error of finite-difference Hessian-vector products on the Fig. 1 FCN (ReLU, MSE),
float32 and float64, against double backprop in float64 (issue 16: is hvp="finite_difference"
good enough for tol = 1e-3?). Five random unit vectors and the top eigenvector; the products
as taken at the first step (the kink check of catapult.curvature.difference off), then with the
check on: refused, or the error after its retries at smaller steps.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/fd_error.py [--n 1000]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_sharpness import make_batch, make_model, mse  # noqa: E402

from catapult.curvature import HessianOperator, difference, sharpness  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    model, batch = make_model("sp"), make_batch(args.n)
    exact = HessianOperator(model, mse, batch, dtype=torch.float64)
    est = sharpness(model, mse, batch, tol=1e-8, dtype=torch.float64, max_iter=300)
    top, lam = est.vector, est.value
    gen = torch.Generator().manual_seed(0)
    vectors = [torch.randn(exact.numel, generator=gen, dtype=torch.float64) for _ in range(5)]
    vectors = [v / v.norm() for v in vectors] + [top]
    print(f"lambda_max = {lam:.6g}")
    print("| dtype | h | check | norm(error) / norm(H v), random unit v (max of 5) | norm(error) / "
          "lambda_max, random (max) | norm(error) / lambda_max, v = top eigenvector | retries |")
    print("|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.float64):
        h = float(torch.finfo(dtype).eps) ** (1 / 3)
        for check in (False, True):
            difference.MAX_GAP = 0.1 if check else float("inf")
            fd = HessianOperator(model, mse, batch, dtype=dtype, hvp="finite_difference")
            errs, abs_errs = [], []
            try:
                for v in vectors:
                    ref = exact(v)
                    got = fd(v.to(dtype)).double()
                    errs.append(float((got - ref).norm() / ref.norm()))
                    abs_errs.append(float((got - ref).norm()) / lam)
            except ValueError as refused:
                gaps = str(refused).split("differ by ")[1].split(" of the")[0]
                print(f"| {str(dtype).split('.')[-1]} | {h:.1e} | on | refused after {len(errs)} of "
                      f"{len(vectors)} products (gaps {gaps}) | | | |", flush=True)
                continue
            print(f"| {str(dtype).split('.')[-1]} | {h:.1e} | {'on' if check else 'off'} | {max(errs[:5]):.1e} | "
                  f"{max(abs_errs[:5]):.1e} | {abs_errs[5]:.1e} | {fd.shrunk_steps} |", flush=True)
    difference.MAX_GAP = 0.1

if __name__ == "__main__":
    main()
