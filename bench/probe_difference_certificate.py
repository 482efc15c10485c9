"""Probe: does a solve on finite-difference products keep its ``error_bound`` against the exact
Hessian? (``catapult/curvature/certify.py``; ``bench/RESULTS.md``, issue 16, 5e)

Two small problems with exact dense float64 Hessians (``tests/dense_curvature.py``): the tests'
one-block GELU GPT (vocab 7, width 8, 1,040 parameters, 4 sequences of 5 tokens) and a tanh MLP
4-6-3 with MSE on 24 samples (51 parameters). For each seed, dtype (float32, float64) and ``tol``
(1e-2, 1e-3, 1e-5), ``sharpness(hvp="finite_difference")`` is compared with the dense top
eigenvalue: the relative error, the reported ``error_bound`` and ``residual``, ``converged`` and
the products. The last line counts the solves whose error is above their bound.

``--preconditioned`` instead measures Adam's pre-conditioned operator on the GPT after 3 steps
(lr 1e-2): the error of one difference product along its top eigenvector (dense) at 1/8 .. 4
times the step ``h = eps^(1/3)``, and ``preconditioned_sharpness`` at ``tol`` 1e-2, 1e-3.

``--restarts N`` sets ``certify.RESTARTS`` (2 by default; 0 shows what the restarts buy);
``--coarse none`` starts ``sharpness`` from a random vector instead of its coarse start. The
plain table also runs on the code before the certificate, for a same-machine comparison:
``git archive 6e720ab src | tar -x -C /tmp/old`` then ``PYTHONPATH=/tmp/old/src`` before the command.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/probe_difference_certificate.py [--seeds 6] [--preconditioned] [--restarts 2] [--coarse none]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

import catapult
from catapult.curvature.hessian import math_attention
from catapult.curvature.preconditioner import PreconditionedOperator, adam_preconditioner
from catapult.curvature.sharpness import build_operator

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from dense_curvature import dense_adam_preconditioned, dense_hessian  # noqa: E402  (independent float64 truth)
from test_coarse_start import tiny_gpt  # noqa: E402
from test_difference_certificate import adam_stepped_gpt  # noqa: E402
from test_spectrum import small_problem  # noqa: E402


def plain(seeds: int, coarse) -> None:
    print("| problem | seed | dtype | tol | rel. error | error_bound | residual | converged | products |")
    print("|---|---|---|---|---|---|---|---|---|")
    above = total = 0
    for name in ("gpt", "mlp"):
        for seed in range(seeds):
            model, loss_fn, batch = tiny_gpt(seed) if name == "gpt" else small_problem(seed=20 + seed)
            with math_attention():   # the fused attention kernels have no double backward
                top = float(np.linalg.eigvalsh(dense_hessian(model, loss_fn, batch).numpy())[-1])
                for dtype in (torch.float32, torch.float64):
                    for tol in (1e-2, 1e-3, 1e-5):
                        est = catapult.sharpness(model, loss_fn, batch, tol=tol, seed=seed, dtype=dtype,
                                                 hvp="finite_difference", coarse=coarse)
                        error = abs(est.value - top) / abs(top)
                        above += error > est.error_bound
                        total += 1
                        print(f"| {name} | {seed} | {str(dtype)[6:]} | {tol:g} | {error:.1e} | {est.error_bound:.1e} "
                              f"| {est.residual:.1e} | {est.converged} | {est.matvecs} |")
    print(f"{above} of {total} solves have an error above their error_bound")


def preconditioned(seeds: int, coarse=None) -> None:
    from catapult.curvature.difference import scaled_step

    print("| seed | product error / lambda at h/8, h/4, h/2, h, 2h, 4h | tol | rel. error | error_bound | converged | products |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(seeds):
        model, loss_fn, batch, opt = adam_stepped_gpt(seed)
        with math_attention():
            A = dense_adam_preconditioned(model, loss_fn, batch, opt)
            values, vectors = np.linalg.eigh(A)
            top, y = float(values[-1]), vectors[:, -1]
            op = build_operator(model, loss_fn, batch, dtype=torch.float32, hvp="finite_difference")
            d, l2 = adam_preconditioner(model, opt, op)
            matvec = PreconditionedOperator(op, d, l2)
            errors = []
            for factor in (0.125, 0.25, 0.5, 1.0, 2.0, 4.0):
                with scaled_step(op, factor):
                    product = matvec(torch.tensor(y, dtype=torch.float32)).double().numpy()
                errors.append(f"{np.linalg.norm(product - A @ y) / top:.1e}")
            for tol in (1e-2, 1e-3):
                est = catapult.preconditioned_sharpness(model, loss_fn, batch, opt, tol=tol, dtype=torch.float32,
                                                        hvp="finite_difference")
                print(f"| {seed} | {', '.join(errors)} | {tol:g} | {abs(est.value - top) / top:.1e} | "
                      f"{est.error_bound:.1e} | {est.converged} | {est.matvecs} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--preconditioned", action="store_true")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--coarse", choices=["auto", "none"], default="auto",
                        help="sharpness' coarse start: the default one, or a random start vector")
    args = parser.parse_args(argv)
    try:
        from catapult.curvature import certify
        certify.RESTARTS = args.restarts
    except ImportError:   # the code before the certificate (PYTHONPATH=<its src>): the plain table runs
        pass
    (preconditioned if args.preconditioned else plain)(args.seeds, None if args.coarse == "none" else "auto")


if __name__ == "__main__":
    main()
