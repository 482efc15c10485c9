"""Probe: where the error of a one-sided difference product comes from, on the small GPT.

``HessianOperator.forward_difference`` approximates ``H u`` by ``(g(theta + h u) - g(theta)) / h``
in float32. Its error has three parts:

* truncation, ``(h / 2) D^3 L[u, u]`` (grows with ``h``);
* rounding of the gradients, ``~ eps ||g|| / h`` (grows as ``h`` shrinks);
* rounding of the point itself: ``theta + h u`` is stored in float32, so the step actually taken
  is ``delta = fl(theta + h u) - theta``, not ``h u``.

For the top eigenvector and a random unit vector, and a range of ``h``, this prints the error
against the exact float64 product ``H u`` and, apart, the part due to the stored point
(``||H delta / h - H u||``). All errors are relative to ``||H u||``.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/probe_difference_error.py
"""
from __future__ import annotations

import argparse

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import problem  # noqa: E402  (the same GPT)

from catapult.curvature import HessianOperator, sharpness  # noqa: E402
from catapult.curvature.hessian import math_attention  # noqa: E402

STEPS = (3e-5, 1e-4, 3.45e-4, 1e-3, 3e-3, 1e-2)  # 3.45e-4 = sqrt(eps), the operator's step


def main() -> None:
    torch.set_num_threads(1)
    model, loss, batch = problem("gpt")
    with math_attention():
        top = sharpness(model, loss, batch, tol=1e-9, dtype=torch.float64, seed=0, coarse=None)
        exact64 = HessianOperator(model, loss, batch, dtype=torch.float64)
        op = HessianOperator(model, loss, batch)  # float32, the parameters' dtype
        theta = op._point(torch.zeros(op.numel), 0.0)
        base = op.gradient().double()
        rand = torch.randn(op.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        print(f"top eigenvalue {top.value:.6f}; ||theta|| {float(theta.norm()):.2f}, "
              f"max |theta_i| {float(theta.abs().max()):.2f}")
        print("| vector | h | error of the difference product | of which the stored point |\n|---|---|---|---|")
        for name, u in (("top eigenvector", top.vector.double()), ("random", rand / rand.norm())):
            hu = exact64(u)
            scale = float(hu.norm())
            for h in STEPS:
                point = op._point(u.float(), h)
                delta = (point - theta).double()
                diff = (op._gradient_at(point).double() - base) / h
                stored = exact64(delta) / h
                print(f"| {name} | {h:.2e} | {float((diff - hu).norm()) / scale:.2e} | "
                      f"{float((stored - hu).norm()) / scale:.2e} |")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help only
    main()
